"""mmtorture campaign: the plan, signatures, resuming from disk, and a small campaign on an embedded Ray."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from stress.campaign import (
    Campaign,
    CampaignError,
    RunSpec,
    build_plan,
    run_campaign,
    signature,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_a_plan_covers_every_cell_before_the_next_seed():
    plan = build_plan(["rcu"], ["rcu", "no_wait_gp"], ["random", "pct"], first_seed=7, runs=5)
    ids = [s.id for s in itertools.islice(plan.specs(), 8)]
    assert ids[:4] == ["rcu.rcu.random.7", "rcu.rcu.pct.7", "rcu.no_wait_gp.random.7", "rcu.no_wait_gp.pct.7"]
    assert ids[4] == "rcu.rcu.random.8"
    mutants = build_plan(["rcu"], mutants=True, seeds=1)
    assert {c[1] for c in mutants.cells} == {p.name for p in __import__("policies").get_scenario("rcu").mutants()}


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"scenarios": ["nosuch"], "runs": 1}, "unknown scenario 'nosuch'"),
        ({"scenarios": ["rcu"], "policies": ["nosuch"], "runs": 1}, "nosuch"),
        ({"scenarios": ["rcu"], "strategies": ["pmc"], "runs": 1}, "unknown strategy 'pmc'"),
        ({"scenarios": ["rcu"]}, "give a budget"),
    ],
)
def test_a_bad_matrix_is_one_clear_error(kwargs, needle):
    with pytest.raises(CampaignError, match=None) as e:
        build_plan(**kwargs)
    assert needle in str(e.value)


def test_a_run_is_the_command_hunt_would_make():
    swarm = RunSpec("vma_lookup", "mmap_lock", "swarm", 11, 1, 2)
    args = swarm.args("r.json")
    assert args[args.index("--programs") + 1] == "swarm" and args[args.index("--ops") + 1] == "600"
    assert swarm.run_cpus == 3  # swarm adds a CPU on odd seeds
    assert swarm.cores == 1  # a controlled run's CPUs take turns: it keeps one core busy
    free_spec = RunSpec("rcu", "rcu", "free", 0, 0, 2)
    free = free_spec.args("r.json")
    assert free[free.index("--scheduler") + 1] == "free" and "--duration" in free and free_spec.cores == 2
    mix = [RunSpec("rcu", "rcu", "mix", n, n, 2).args("r.json") for n in range(3)]
    assert [a[a.index("--scheduler") + 1] for a in mix] == ["random", "random", "pct"]


def test_a_signature_leaves_out_what_differs_run_by_run():
    a = {"check": "mm.lost-write", "op": "access", "site": ["check_lost_write", "wp_page_copy"], "message": "1 write"}
    b = dict(a, message="3 writes")
    assert signature("vma_lookup", "m", a) == signature("vma_lookup", "m", b)
    assert signature("vma_lookup", "m", a) != signature("vma_lookup", "m", dict(a, op="fork"))


def test_resume_reads_what_finished_and_runs_only_the_rest(tmp_path):
    d = str(tmp_path / "c")
    c = Campaign.create(d, build_plan(["rcu"], ["no_wait_gp"], ["random"], runs=3))
    first = next(c.pending())
    finding = {"check": "rcu.pipe-age", "op": "read", "site": ["reader"], "message": "m"}
    c.record({"id": first.id, "spec": first.__dict__, "exit": 1, "attempts": 2, "findings": [finding]})
    with open(os.path.join(d, "runs.jsonl"), "a") as f:
        f.write('{"id": "cut short')  # a line a kill interrupted: that run is run again
    with pytest.raises(CampaignError, match="--resume"):
        Campaign.create(d, c.plan)
    again = Campaign.resume(d)
    assert list(again.done) == [first.id]
    assert [s.seed for s in again.pending()] == [1, 2]  # the budget counts what finished
    (sig,) = again.signatures.values()
    assert sig.count == 1 and sig.expected and sig.mutant
    assert again.summary()["retried"] == 1
    with pytest.raises(CampaignError, match="cannot resume"):
        Campaign.resume(str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["campaign", "-s", "rcu", "--runs", "0"], "--runs must be a positive integer"),
        (["campaign", "-s", "nosuch", "--runs", "1"], "unknown scenario 'nosuch'"),
        (["campaign", "-s", "rcu"], "give a budget"),
        (["campaign", "--resume", "/nonexistent/campaign"], "cannot resume /nonexistent/campaign"),
    ],
)
def test_bad_campaign_input_is_one_line_and_exit_2(args, needle):
    r = subprocess.run([sys.executable, "-m", "stress", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _runs(d: str) -> list[dict]:
    with open(os.path.join(d, "runs.jsonl")) as f:
        return [json.loads(line) for line in f]


def _ray_processes() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"raylet" in cmd or b"gcs_server" in cmd or b"ray::" in cmd or b"default_worker.py" in cmd:
                out.add(int(pid))
    return out


def test_a_small_campaign_on_an_embedded_ray(tmp_path):
    """Mutants and their correct twin, a few seeds each: each mutant's check found under one
    signature per site, the correct policy clean, every run on disk, and nothing left behind:
    no segment in /dev/shm, no Ray process."""
    pytest.importorskip("ray")
    shm_before = set(os.listdir("/dev/shm"))
    ray_before = _ray_processes()
    d = str(tmp_path / "c")
    plan = build_plan(["rcu"], ["rcu", "no_wait_gp", "unlock_twice"], ["random"], seeds=3)
    doc = run_campaign(Campaign.create(d, plan))
    assert doc["runs"] == 9 and doc["exits"].get("2") is None and not doc["interrupted"]
    sigs = doc["signatures"]
    assert {s["policy"] for s in sigs} == {"no_wait_gp", "unlock_twice"}  # rcu, the correct one, is clean
    assert all(s["expected"] and s["mutant"] for s in sigs), sigs
    assert len(sigs) == 2, [s["signature"] for s in sigs]  # one bug each, whichever seed found it
    assert sum(s["count"] for s in sigs) == sum(bool(r.get("findings")) for r in _runs(d))
    with open(os.path.join(d, "campaign.json")) as f:
        assert json.load(f)["runs"] == 9
    assert len(_runs(d)) == 9
    assert os.path.getsize(os.path.join(d, "campaign.png")) > 0  # signatures over time
    for s in sigs:  # each with its reproducer, shrunk in the background, which replays
        assert os.path.exists(s["report"]) and s["reproducer"], s.get("reproducer_error")
        text = s["reproducer_text"].splitlines()  # drawn as the seeds draw races: a column per CPU
        assert text[1].split()[0].startswith("cpu") and set(text[2].replace(" ", "")) == {"="}, text
        assert any(f"[{s['check']}]" in line for line in text[-4:]), text  # the finding at the bottom
        assert os.path.getsize(s["reproducer_image"]) > 0
        replay = [sys.executable, "-m", "stress", "replay", s["reproducer"], "-q"]
        r = subprocess.run(replay, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and f"first [{s['check']}]" in r.stdout, r.stdout + r.stderr
    left = os.listdir("/dev/shm")
    run_ids = [r["run_id"] for r in _runs(d)]
    assert all(run_ids) and not [n for n in left if any(i in n for i in run_ids)]  # the runs' segments
    assert {n for n in left if not n.startswith("mmtorture-")} <= shm_before  # Ray's own
    assert not _ray_processes() - ray_before


def test_without_ray_the_campaign_says_how_to_get_it(monkeypatch):
    from stress.campaign import ray_init

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(CampaignError, match=r"pip install 'mmtorture\[campaign\]'"):
        ray_init(None)


def test_a_run_killed_by_sigkill_is_run_once_more_and_counted_once(tmp_path, monkeypatch):
    """The first run of harness_test/killed_once SIGKILLs its own runner mid-run (its CPU 0 does,
    at its first operation, as the OOM killer would): the campaign completes, that run took two
    attempts and is one line, and nothing of the killed run is left in /dev/shm."""
    pytest.importorskip("ray")
    from tests.conftest import HARNESS_SCENARIOS

    marker = tmp_path / "killed"
    monkeypatch.setenv("MMTORTURE_TEST_KILL_ONCE", str(marker))  # Ray's workers inherit it
    d = str(tmp_path / "c")
    plan = build_plan(
        ["harness_test"], ["killed_once"], ["random"], seeds=2, ops=20, policy_modules=[HARNESS_SCENARIOS]
    )
    doc = run_campaign(Campaign.create(d, plan))
    assert marker.exists()
    runs = _runs(d)
    assert doc["runs"] == 2 and len(runs) == 2 and doc["retried"] == 1
    assert sorted(r["attempts"] for r in runs) == [1, 2] and all(r["exit"] == 0 for r in runs)
    assert not doc["signatures"]
    (killed,) = [r for r in runs if r["attempts"] == 2]
    assert killed["cleaned"], "the killed attempt's segments were not found dead and cleaned"
    left = os.listdir("/dev/shm")
    assert not [n for n in left if n in killed["cleaned"] or any(r["run_id"] in n for r in runs)]


def test_the_live_line_counts_runs_and_signatures_and_says_when_it_ends(tmp_path):
    from io import StringIO

    from tqdm import tqdm

    from stress.campaign.command import _tick

    c = Campaign.create(str(tmp_path / "c"), build_plan(["rcu"], ["no_wait_gp"], ["random"], duration=600))
    finding = {"check": "rcu.pipe-age", "op": "read", "site": ["rcu_torture_read"], "message": "freed"}
    c.record({"id": "r0", "spec": {"scenario": "rcu", "policy": "no_wait_gp"}, "exit": 1, "findings": [finding]})
    out = StringIO()
    bar = tqdm(unit="run", file=out)
    _tick(bar, c)
    bar.refresh()
    line = out.getvalue().strip().split("\r")[-1]
    assert "1run" in line.replace(" ", "") and "run/s" in line and "signatures=1" in line, line
    assert re.search(r"ends in=(09:5\d|10:00)", line), line
