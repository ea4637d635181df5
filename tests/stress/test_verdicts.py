"""No failure ends as a success, and every command the tool prints works as printed."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

import stress.report
from policies import get_scenario, load_module
from shm import Cpu, Machine, new_run_id
from shm.rcu import Rcu
from stress.runner import run
from stress.schedulers.deadline import DeadlineScheduler, TeardownStall
from tests.conftest import FIXTURES

BIN = os.path.dirname(sys.executable)
USER_MODULE = os.path.join(FIXTURES, "vma_big.py")


def cli(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, MMTORTURE_PROGRESS="off", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    e.pop("MMTORTURE_POLICY_MODULE", None)
    e.update(env or {})
    return subprocess.run(list(args), cwd=cwd, env=e, capture_output=True, text=True, timeout=300)


def test_an_exception_while_building_the_report_is_exit_3(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(stress.report, "collect_findings", broken)
    r = run("seqcount", "seqcount", cpus=2, ops=100, seed=0, scheduler="random", progress="off")
    assert r.exit_code == 3
    assert any("building the report failed: RuntimeError: injected" in e for e in r.report["harness_errors"])
    assert stress.report.end_line(r.exit_code, r.report) == "End of test: FAILURE"


def test_a_teardown_whose_rcu_barrier_never_ends_is_exit_3(monkeypatch):
    real = Rcu.barrier

    def never(self, cpu, timeout=None):
        return False if timeout is not None else real(self, cpu, timeout)

    monkeypatch.setattr(Rcu, "barrier", never)
    r = run("rcu", "rcu", cpus=2, ops=100, seed=0, scheduler="random", progress="off")
    assert r.exit_code == 3 and r.findings == []
    assert any("rcu_barrier did not finish" in e for e in r.report["harness_errors"])


def test_the_boot_cpu_may_spin_on_a_contended_lock():
    """Regression: DeadlineScheduler.spin did not take the word a spin names (TypeError)."""
    m = Machine.create(new_run_id(), ncpus=2, pool_pages=8)
    try:
        sched = DeadlineScheduler()
        boot = Cpu(m, m.boot_cpu, sched)
        holder = Cpu(m, 0)
        ptl = m.pool.ptl(0)
        ptl.lock(holder)
        sched.deadline = time.monotonic()  # already passed: the first spin ends the wait
        with pytest.raises(TeardownStall):
            ptl.lock(boot)
        ptl.unlock(holder)
    finally:
        m.unlink()
        m.close()


def test_op_bounded_runs_reach_their_budget_past_the_default_duration():
    r = run("seqcount", "seqcount", cpus=2, ops=3000, seed=0, progress="off")
    assert r.report["knobs"]["duration"] is None
    assert r.report["ops"] == 6000 and r.report["stop_reason"] == "operation budget"


def test_a_failing_run_without_json_writes_its_report_and_prints_a_replay_that_works(tmp_path):
    p = cli(
        "mmtorture",
        "run",
        "-s",
        "refcount",
        "-p",
        "inc_not_unless_zero",
        "--scheduler",
        "random",
        "--seed",
        "1",
        "--ops",
        "300",
        cwd=tmp_path,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    (replay,) = re.findall(r"replay: (mmtorture replay \S+)", p.stdout)
    assert os.path.dirname(shlex.split(replay)[-1]) == str(tmp_path)
    again = cli(*shlex.split(replay), "-q", cwd=tmp_path)
    assert again.returncode == 1 and "reproduced 1/1" in again.stdout, again.stdout + again.stderr


def test_a_users_scenario_replays_and_shrinks_without_naming_its_module_again(tmp_path):
    p = cli(
        "mmtorture",
        "run",
        "-s",
        "vma_lookup_big",
        "-p",
        "gup_unpins_twice",
        "--litmus",
        "--seed",
        "0",
        "--policy-module",
        USER_MODULE,
        "--json",
        "r.json",
        "-q",
        cwd=tmp_path,
    )
    assert p.returncode == 1 and "caught by mm.pte-maps-freed-page" in p.stdout, p.stdout + p.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["policy_modules"] == [USER_MODULE]
    again = cli("mmtorture", "replay", "r.json", "-q", cwd=tmp_path)
    assert again.returncode == 1 and "reproduced 1/1" in again.stdout, again.stdout + again.stderr
    small = cli("mmtorture", "shrink", "r.json", "-q", cwd=tmp_path)
    assert small.returncode == 1 and "shrunk [mm.pte-maps-freed-page]" in small.stdout, small.stdout + small.stderr
    assert cli("mmtorture", "replay", "r.shrunk.json", "-q", cwd=tmp_path).returncode == 1


def test_a_scenario_registered_by_an_import_is_recorded_for_replay():
    load_module("tests.fixtures.vma_big")
    r = run("vma_lookup_big", "mmap_lock", cpus=2, ops=20, seed=0, scheduler="random", progress="off")
    assert r.report["policy_modules"] in (["tests.fixtures.vma_big"], [USER_MODULE])


def test_the_policy_module_environment_variable_loads_a_module(tmp_path):
    p = cli("mmtorture", "list", cwd=tmp_path, env={"MMTORTURE_POLICY_MODULE": USER_MODULE})
    assert p.returncode == 0 and "vma_lookup_big" in p.stdout


def test_a_module_loaded_by_path_and_by_name_registers_once():
    load_module(USER_MODULE)
    first = get_scenario("vma_lookup_big")
    load_module("tests.fixtures.vma_big")
    load_module(USER_MODULE)
    assert get_scenario("vma_lookup_big") is first


def test_every_hunt_catch_reproduces_with_the_command_it_prints(tmp_path):
    p = cli("mmtorture", "hunt", "-s", "percpu_ref", "--max-seeds", "100", "--json", "hunt.json", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads((tmp_path / "hunt.json").read_text())["rows"]
    assert len(rows) == len(get_scenario("percpu_ref").mutants())
    for row in rows:
        assert f"    reproduce: {row['command']}" in p.stdout
        again = cli(*shlex.split(row["command"]), "-q", cwd=tmp_path)
        assert f"caught by {row['caught']})" in again.stdout, (row, again.stdout)


def test_a_mutant_that_escapes_says_so_on_the_end_line():
    r = run(
        "spinlock",
        "busted",
        cpus=2,
        progress="off",
        program=[[["increment", 0, 1]], [["increment", 0, 1]]],
        schedule={"first": 0, "deviations": [[], [], []]},
    )
    assert r.exit_code == 0 and r.report["caught"] is False
    assert stress.report.end_line(r.exit_code, r.report) == "End of test: SUCCESS (MUTANT NOT CAUGHT)"


def test_hunt_searches_past_another_check_and_fails_when_only_that_one_fires(tmp_path):
    p = cli(
        "mmtorture",
        "hunt",
        "-s",
        "harness_test",
        "--policy-module",
        os.path.join(FIXTURES, "harness_scenarios.py"),
        "--max-seeds",
        "3",
        cwd=tmp_path,
    )
    assert p.returncode == 1, p.stdout + p.stderr
    assert "found first by another check, search went on: lock.held-at-return (seed 0)" in p.stdout
    assert "1 not caught (1 found only by another check)" in p.stdout


def test_inspect_names_the_operations_waits_and_locks_of_a_live_run(tmp_path):
    fifo = str(tmp_path / "announce")
    os.mkfifo(fifo)
    env = dict(os.environ, MMTORTURE_TEST_FIFO=fifo, MMTORTURE_PROGRESS="off")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stress",
            "run",
            "-s",
            "harness_test",
            "-p",
            "hold_spinlock",
            "--policy-module",
            os.path.join(FIXTURES, "harness_scenarios.py"),
            "--cpus",
            "2",
            "--duration",
            "120",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        segment = re.search(r"machine segment (\S+)", proc.stdout.readline()).group(1)
        with open(fifo) as f:
            f.readline()  # cpu 0 holds the spinlock now
        p = cli("mmtorture", "inspect", segment, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert "harness_test/hold_spinlock" in p.stdout
        assert re.search(r"cpu 0 .* in step", p.stdout)
        assert "cpu0 holds spinlock state:harness_test:s[0].lock" in p.stdout
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
