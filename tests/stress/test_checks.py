"""Every check is proven: a mutant whose run's first finding is that check.

`mmtorture list --checks` lists each check with the mutants that name it;
a check no mutant names is a failing test, and so is one that none of its
provers trips first within the hunt's seeds (a mutant that names two
checks must show each of them first on some seed).  The controlled-scheduler detectors and
the watchdog's (which work on wall-clock time, free-running) are proven
separately: the same bug, a deadlock or a wait that never ends, is named
by the one that sees it.
"""

from __future__ import annotations

import json

import pytest

from shm.checks import all_checks
from stress.cli import check_table, main

FREE_RUNNING_ONLY = {"watchdog.stall"}
CHECKS = [c.id for c in all_checks()]


def test_every_check_has_a_proving_mutant(capsys):
    assert main(["list", "--checks", "--json"]) == 0
    orphans = [r["check"] for r in json.loads(capsys.readouterr().out) if not r["mutants"]]
    assert not orphans, f"checks no mutant proves: {orphans}"


@pytest.mark.parametrize("check", [c for c in CHECKS if c not in FREE_RUNNING_ONLY])
def test_a_mutant_trips_the_check_first(hunted, check):
    provers = next(r["mutants"] for r in check_table() if r["check"] == check)
    caught = {}
    for label in provers:
        scenario, mutant = label.split("/")
        row = hunted(scenario, mutant, want=check)
        caught[label] = row.caught
        if row.caught == check:
            return
    pytest.fail(f"no mutant's first finding is {check}: {caught}")


def test_the_watchdog_names_a_spin_that_never_ends_a_stall(mmtorture_run):
    """srcu_read_unlock on the other index: synchronize_srcu waits forever, free-running."""
    r = mmtorture_run("srcu", "unlock_other_index", cpus=2, ops=400, seed=0, stall_timeout=1)
    assert r.first_check == "watchdog.stall", [f.headline() for f in r.findings]
    assert r.findings[0].kind == "hang" and "made no progress" in r.findings[0].message
    assert r.report["caught"] is True


def test_the_watchdog_finds_a_free_running_lock_cycle(mmtorture_run):
    """ABBA free-running: the wait-for graph, not the controlled scheduler, names the cycle."""
    for seed in range(20):
        r = mmtorture_run("spinlock", "abba", cpus=2, ops=5000, seed=seed, window_rate=0.2, stall_timeout=30)
        if r.findings:
            break
    assert r.first_check == "lock.deadlock-cycle", [f.headline() for f in r.findings]
    assert r.findings[0].message.startswith("deadlock: cpu ")  # the watchdog's chain, not the scheduler's
    assert "locks_held" in r.findings[0].objects
