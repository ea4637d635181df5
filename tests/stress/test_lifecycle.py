"""Nothing is lost on any exit path: a killed CPU, SIGINT, SIGTERM, a stall."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import HARNESS_SCENARIOS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def start(tmp_path, policy, *extra):
    fifo = str(tmp_path / "announce")
    os.mkfifo(fifo)
    report = str(tmp_path / "report.json")
    env = dict(os.environ, MMTORTURE_TEST_FIFO=fifo, MMTORTURE_PROGRESS="off")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stress",
            "run",
            "--scenario",
            "harness_test",
            "--policy",
            policy,
            "--policy-module",
            HARNESS_SCENARIOS,
            "--cpus",
            "2",
            "--duration",
            "120",
            "--json",
            report,
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open(fifo) as f:  # blocks until CPU 0 is where the policy says
        pid = int(f.readline())
    return proc, pid, report


def finish(proc):
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def gone(pid: int) -> bool:
    """Reaped: not even a zombie is left."""
    return not os.path.exists(f"/proc/{pid}")


def test_sigkill_of_a_cpu_holding_a_spinlock_is_a_cpu_crash(tmp_path):
    proc, pid, report = start(tmp_path, "hold_spinlock")
    os.kill(pid, signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 1, err
    rep = json.load(open(report))
    (f,) = [f for f in rep["findings"] if f["check"] == "cpu.crash"]
    assert f["cpu"] == 0 and "killed by signal 9" in f["message"]
    assert any(e.split()[1] == "lock" and "state:harness_test:s[0].lock" in e for e in f["trace"])
    assert f["objects"]["locks_held"] == {"cpu0": ["spinlock state:harness_test:s[0].lock"]}
    assert "End of test: FAILURE" in out
    assert gone(pid)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_runner_writes_an_interrupted_report(tmp_path, sig, code):
    proc, pid, report = start(tmp_path, "announce")
    proc.send_signal(sig)
    rc, out, err = finish(proc)
    assert rc == code, err
    rep = json.load(open(report))
    assert rep["interrupted"] is True and rep["schema"] == "mmtorture-report/2"
    assert rep["ops"] > 0
    assert gone(pid)


def test_a_cpu_stuck_without_saying_why_is_a_stall(tmp_path):
    proc, pid, report = start(tmp_path, "stall", "--stall-timeout", "1")
    code, out, err = finish(proc)
    assert code == 1, err
    (f,) = json.load(open(report))["findings"]
    assert f["check"] == "watchdog.stall" and "made no progress" in f["message"] and f["cpu"] == 0
    assert gone(pid)


def test_a_signal_stops_the_loop_of_runs_not_only_the_run(monkeypatch, capsys):
    """A run that SIGINT stopped cleaned up and wrote its report; the hunt around it must stop
    too (before, each run of a hunt or a benchmark caught the signal and the loop went on)."""
    from stress import hunt
    from stress.cli import main
    from stress.runner import Interrupted, run

    runs = []

    def stopped(*args, **kwargs):
        r = run(*args, **kwargs)
        runs.append(r)
        r.report.update(interrupted=True, signal=int(signal.SIGINT))
        r.exit_code = 130
        return r

    monkeypatch.setattr(hunt, "run", stopped)
    with pytest.raises(Interrupted):
        hunt.hunt_one("refcount", "refcount_t", ("refcount.underflow",), max_seeds=50)
    assert len(runs) == 1
    assert main(["hunt", "-s", "refcount", "--max-seeds", "50"]) == 130 and len(runs) == 2
    assert "interrupted by signal 2: stopped" in capsys.readouterr().err


def test_an_interrupted_hunt_writes_the_rows_it_finished(monkeypatch, tmp_path):
    """The hunt's JSON is written on a signal too: the mutants hunted before it, marked interrupted."""
    import json

    from policies import get_scenario
    from stress import hunt
    from stress.cli import main
    from stress.runner import run

    first = get_scenario("refcount").mutants()[0]
    stop_at = hunt.hunt_one("refcount", first.name, first.expect, strategy="random").seeds + 1
    runs = []

    def stopped(*args, **kwargs):
        r = run(*args, **kwargs)
        runs.append(r)
        if len(runs) == stop_at:
            r.report.update(interrupted=True, signal=int(signal.SIGTERM))
            r.exit_code = 143
        return r

    monkeypatch.setattr(hunt, "run", stopped)
    out = tmp_path / "hunt.json"
    assert main(["hunt", "-s", "refcount", "--strategy", "random", "--json", str(out)]) == 143
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and [r["mutant"] for r in doc["rows"]] == [first.name]
    assert doc["rows"][0]["right_check"]


def test_a_signal_while_the_run_cleans_up_marks_its_report_interrupted(monkeypatch, tmp_path):
    """The report is built before the segments are unlinked; a SIGTERM that lands in between
    still makes the run an interrupted one (exit 143), and nothing is left behind."""
    from stress.runner import Runner, run

    cleanup = Runner._cleanup

    def signalled_cleanup(self):
        os.kill(os.getpid(), signal.SIGTERM)
        cleanup(self)

    monkeypatch.setattr(Runner, "_cleanup", signalled_cleanup)
    out = tmp_path / "r.json"
    r = run("refcount", "refcount_t", cpus=2, ops=20, seed=1, json_path=str(out), progress="off")
    assert r.exit_code == 143 and not r.findings
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and doc["signal"] == signal.SIGTERM
