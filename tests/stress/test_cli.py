"""The command line: exit codes, one-line errors, list, clean, python -m stress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from shm import Layout, Region, Segment, new_run_id
from stress.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def cli(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, MMTORTURE_PROGRESS="off")
    return subprocess.run(
        [sys.executable, "-m", "stress", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--scenario", "nosuch"], "unknown scenario 'nosuch' (known: context,"),
        (["run", "-s", "spinlock", "-p", "nosuch"], "(known: spin_lock, busted, abba, double_lock_same"),
        (["run", "-s", "spinlock", "--cpus", "-1"], "--cpus must be a positive integer"),
        (["run", "-s", "spinlock", "--cpus", "abc"], "--cpus must be an integer"),
        (["run", "-s", "spinlock", "--ops", "-5"], "--ops must be a non-negative integer"),
        (["run", "-s", "spinlock", "--duration", "nan"], "--duration must be a finite"),
        (["run", "-s", "spinlock", "--json", "/nonexistent/dir/r.json"], "does not exist"),
        (["run", "-s", "spinlock", "--cpus", "99"], "--cpus must be at most 62"),
        (["run"], "give either --scenario NAME or --all"),
        (["run", "-s", "spinlock", "--start-method", "vfork"], "must be one of fork, spawn"),
        (["frobnicate"], "invalid choice"),
        (["run", "-s", "x", "--policy-module", "/no/such/file.py"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args, needle):
    if args[0] == "frobnicate":
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
    else:
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]


def test_bad_environment_knob_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("MMTORTURE_CPUS", "lots")
    assert main(["run", "-s", "spinlock", "--ops", "1"]) == 2
    assert "MMTORTURE_CPUS must be an integer" in capsys.readouterr().err


def test_inspect_of_a_segment_with_another_layout_is_exit_2(capsys):
    seg = Segment.create(Layout("not-a-machine", [Region("a", "<i8", 2)]), new_run_id(), 0)
    try:
        assert main(["inspect", seg.name]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "holds layout 'not-a-machine', not a machine" in line
    finally:
        seg.unlink()
        seg.close()
    assert main(["inspect", "mmtorture-1-dead-0"]) == 2
    assert "no shared-memory segment" in capsys.readouterr().err


def test_run_exit_codes_and_report_through_python_m(tmp_path):
    report = tmp_path / "r.json"
    ok = cli("run", "-s", "seqcount", "--cpus", "2", "--ops", "500", "--seed", "3", "--json", str(report))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "End of test: SUCCESS"
    rep = json.loads(report.read_text())
    for key in (
        "schema",
        "scenario",
        "policy",
        "seed",
        "cpus",
        "scheduler",
        "ops",
        "duration_s",
        "findings",
        "interrupted",
    ):
        assert key in rep
    assert rep["ops"] == 1000 and rep["seed"] == 3 and rep["interrupted"] is False
    bad = cli(
        "run",
        "-s",
        "seqcount",
        "-p",
        "no_retry",
        "--cpus",
        "2",
        "--ops",
        "5000",
        "--seed",
        "0",
        "--window-rate",
        "0.1",
        cwd=str(tmp_path),
    )
    assert bad.returncode == 1
    assert "[seqcount.torn-read]" in bad.stdout
    assert bad.stdout.strip().splitlines()[-1] == "End of test: FAILURE (caught by seqcount.torn-read)"


def test_list_json_has_every_policy(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {(r["scenario"], r["policy"]) for r in rows}
    for s in ("spinlock", "rwsem", "mutex", "refcount", "rcu", "srcu", "seqcount", "percpu_ref", "context"):
        assert any(n[0] == s for n in names), s
    for r in rows:
        assert set(r) >= {"scenario", "policy", "mutant", "expect", "source"}
        assert bool(r["expect"]) == r["mutant"]


def test_clean_reports_what_it_removed(capsys):
    assert main(["clean"]) == 0
    assert "segment(s) removed" in capsys.readouterr().out


def test_bench_primitives_writes_json_with_targets(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "primitives", "--quick", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "mmtorture-bench/1"
    for key in (
        "fetch_add_ns",
        "fetch_add_contended_2proc_ns",
        "rcu_read_lock_unlock_ns",
        "spin_lock_unlock_ns",
        "refcount_get_put_ns",
        "speedup_vs_atomics",
    ):
        assert key in doc["results"]
    assert set(doc["verdict"]) == set(doc["targets"])


def test_the_detection_table_names_the_slow_mutants_and_the_slowest():
    from stress.detection import _summary, detection_table

    def row(name: str, seconds: float, caught: int = 2) -> dict:
        s = {"caught": caught, "hunts": 2, "median_seconds": seconds}
        return {"scenario": "sc", "mutant": name, "strategies": {"random": s}, "best": "random"}

    rows = [row("fast", 0.2), row("slow", 12.5), row("missed", 60.0, caught=0)]
    rows[0]["reproduce"] = {"reproduced": True, "replayed": 10, "replays": 10}
    rows[1]["reproduce"] = {"reproduced": False, "replayed": 0, "replays": 0}
    doc = _summary(rows, ["random"], [0], 60.0, 1.0)
    table = detection_table(doc)
    assert "the same check every time): 1 of 2; not sc/slow." in table
    assert "the slowest: 60.0 s (target < 60 s: MISSED)" in table and "every mutant caught: MISSED" in table
    slow = [line for line in table.splitlines() if line.startswith("| sc/")]
    assert slow == ["| sc/missed | 0/2, 60.0 s | random |", "| sc/slow | 2/2, 12.5 s | random |"]


def test_a_scenario_hunted_again_replaces_its_rows_in_a_bench_measured_alike(tmp_path):
    from stress.detection import _summary, detection_table, merged

    def row(scenario: str, name: str, seconds: float) -> dict:
        s = {"caught": 2, "hunts": 2, "median_seconds": seconds}
        return {"scenario": scenario, "mutant": name, "strategies": {"random": s}, "best": "random"}

    old = _summary([row("a", "x", 0.1), row("b", "y", 30.0)], ["random"], [0, 1], 60.0, 100.0)
    old["merged"] = "an earlier merge by hand"  # its note is kept
    path = tmp_path / "d.json"
    path.write_text(json.dumps(old))
    new = _summary([row("b", "y", 2.0), row("b", "z", 0.5)], ["random"], [0, 1], 60.0, 10.0)
    doc = merged(str(path), new, "b", io.StringIO())
    assert [(r["scenario"], r["mutant"]) for r in doc["rows"]] == [("a", "x"), ("b", "y"), ("b", "z")]
    assert doc["mutants"] == 3 and doc["seconds"] == 110.0 and doc["remeasured"] == ["b"]
    assert doc["notes"] == ["an earlier merge by hand"]
    assert doc["max_seconds_best"] == 2.0 and "Hunted again since, against the model as it is now: b." in (
        detection_table(doc)
    )
    other = _summary([row("b", "y", 2.0)], ["random"], [0, 1, 2], 60.0, 10.0)
    said = io.StringIO()
    assert merged(str(path), other, "b", said) is other and "measured otherwise" in said.getvalue()


def test_bench_detection_hunts_every_mutant_blind_by_each_strategy(tmp_path, capsys):
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    assert main(["bench", "detection", "--quick", "-s", "rcu", "--json", str(out), "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert doc["bench"] == "detection" and doc["mutants"] == 2 and png.stat().st_size > 0
    for row in doc["rows"]:
        assert set(row["strategies"]) == {"random", "swarm", "pct", "free"}
        assert row["strategies"][row["best"]]["caught"] == row["strategies"][row["best"]]["hunts"]
        if row["strategies"]["free"]["caught"]:
            assert row["reproduce"]["reproduced"] and row["reproduce"]["replayed"] == 10, row
    assert doc["met"]["caught_by_best"]
    assert doc["free_caught"] >= 1 and doc["met"]["reproduced"]
    out = capsys.readouterr().out
    assert "| mutants caught |" in out and "reproduced 10/10" in out
    assert main(["bench", "scheduler", "-s", "rcu"]) == 2
    assert "--scenario is for `bench detection`" in capsys.readouterr().err


def test_an_interrupted_detection_bench_writes_the_mutants_it_finished(monkeypatch, tmp_path):
    from stress import detection

    calls = []
    hunt_one = detection.hunt_one

    def hunt_then_stop(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return hunt_one(*args, **kwargs)

    monkeypatch.setattr(detection, "hunt_one", hunt_then_stop)
    out = tmp_path / "d.json"
    with pytest.raises(KeyboardInterrupt):
        detection.bench_detection(str(out), quick=True, scenario="rcu", strategies=("random",))
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and len(doc["rows"]) == doc["mutants"] == 1
    assert doc["rows"][0]["strategies"]["random"]["hunts"] == 2
