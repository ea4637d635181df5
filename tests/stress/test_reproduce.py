"""A free-running finding made replayable: the last operations of every CPU, searched under control."""

from __future__ import annotations

import json
import math

from stress.cli import main
from stress.replay import mismatch, replay
from stress.reproduce import reproduce, suffix_program
from stress.runner import run


def _as_free_running(report: dict) -> dict:
    """A controlled run's report without its program and schedule: what a free-running run of the same
    seed leaves (each CPU drew the same operations from the seeded generator), deterministically."""
    report = dict(report)
    del report["program"], report["schedule"]
    report["scheduler"] = "free"
    return report


def _failing(scenario: str, policy: str) -> dict:
    r = next(
        r
        for seed in range(50)
        if (r := run(scenario, policy, cpus=2, ops=60, seed=seed, scheduler="random", progress="off")).findings
    )
    return r.report


def test_the_suffix_is_the_operations_each_cpu_ran_last():
    report = _failing("refcount", "nonatomic_inc")
    full = report["program"]
    suffix = suffix_program(_as_free_running(report), 4)
    for cpu, ran in enumerate(full):
        assert suffix[cpu] == ran[max(0, len(ran) - 4) :] or suffix[cpu][:-1] == ran[max(0, len(ran) - 3) :]


def test_a_free_running_finding_gets_a_reproducer_that_replays_10_of_10():
    report = _as_free_running(_failing("refcount", "nonatomic_inc"))
    found = reproduce(report, max_runs=400, max_seconds=math.inf)
    assert found is not None and found.check == report["findings"][0]["check"]
    again = found.result.report
    assert again["program"] and again["schedule"]
    for _ in range(10):
        assert mismatch(again, replay(again)) is None


def test_a_free_running_stall_is_reproduced_by_the_hang_the_scheduler_proves():
    """Free-running, a lost wakeup is a watchdog stall (nothing moved for too long); under control
    it is every CPU blocked.  Both are the one hang: the stall gets a reproducer."""
    report = _as_free_running(_failing("percpu_ref", "lost_wakeup"))
    proved = report["findings"][0]
    assert proved["kind"] == "hang"
    report["findings"] = [dict(proved, check="watchdog.stall")]
    found = reproduce(report, max_runs=400, max_seconds=math.inf)
    assert found is not None and found.check == proved["check"] != "watchdog.stall"
    assert mismatch(found.result.report, replay(found.result.report)) is None


def test_reproduce_refuses_a_controlled_report(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_failing("refcount", "nonatomic_inc")))
    assert main(["reproduce", str(path)]) == 2
    err = capsys.readouterr().err
    assert "controlled run: replay it" in err and len(err.strip().splitlines()) == 1


def test_a_finding_that_needs_the_state_the_run_built_is_reproduced_from_a_longer_window():
    """A pgtable_bytes that kept the tables freed is wrong only against the tables the whole
    run allocated and freed: here a munmap frees two tables first and 40 accesses to mapped
    pages follow, so no suffix of 32 operations trips it and the search widens the window up
    to everything each CPU ran."""
    program = [
        [["access", 0, 48, 1], ["munmap", 0, 48, 15]] + [["access", 0, i % 16, 1] for i in range(40)],
        [["access", 0, i % 16, 0] for i in range(40)],
    ]
    r = run("vma_lookup", "pgtable_bytes_kept", cpus=2, program=program, scheduler="free", progress="off")
    report = r.report
    assert report["findings"][0]["check"] == "mm.pgtable-bytes" and report.get("schedule") is None
    found = reproduce(report, max_runs=600, max_seconds=math.inf)
    assert found is not None and found.check == report["findings"][0]["check"] and found.window > 32
    assert mismatch(found.result.report, replay(found.result.report)) is None


def test_the_whole_program_gets_what_is_left_of_the_budget(monkeypatch):
    """A few seeds per short window, then the whole program is searched until the budget runs out:
    a finding that needs the state the run built is not given up on while there is time."""
    import stress.reproduce as rp

    report = _as_free_running(_failing("refcount", "nonatomic_inc"))
    report["findings"] = [dict(report["findings"][0], check="no.such-check")]
    windows: list[int] = []
    runs: list[int] = []
    monkeypatch.setattr(rp, "SEEDS_PER_WINDOW", 3)
    monkeypatch.setattr(rp, "run", lambda *a, **k: runs.append(max(map(len, k["program"]))) or run(*a, **k))
    said = lambda s: windows.append(int(s.split()[1].rstrip(":")))  # noqa: E731
    assert reproduce(report, max_runs=40, max_seconds=math.inf, say=said) is None
    assert len(runs) == 40 and len(windows) > 2
    assert runs[: 3 * (len(windows) - 1)] == [w for w in windows[:-1] for _ in range(3)]
    assert set(runs[3 * (len(windows) - 1) :]) == {windows[-1]} and len(runs) - 3 * (len(windows) - 1) > 3


def test_a_stall_is_reproduced_by_any_proof_of_a_hang_and_nothing_else():
    from types import SimpleNamespace as F

    from stress.reproduce import same_finding

    stall = {"check": "watchdog.stall", "kind": "hang"}
    assert same_finding(stall, F(check="sched.all-blocked", kind="hang"))
    assert same_finding(stall, F(check="lock.deadlock-cycle", kind="deadlock"))
    assert not same_finding(stall, F(check="pool.uaf", kind="use-after-free"))
    assert not same_finding({"check": "pool.uaf", "kind": "use-after-free"}, F(check="slab.uaf", kind="use-after-free"))
