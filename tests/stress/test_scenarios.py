"""Every correct policy runs clean; every mutant is caught by the check it names, first.

Under the controlled scheduler a run is a function of (scenario, policy,
seed, scheduler), so detection is deterministic.  Each mutant is searched
as `mmtorture hunt` searches it (pct on generated programs, random on its
litmus program if it has one), seed after seed; its run's first finding
must be a check it names, and its report, replayed ten times, must give the
same findings.  Its correct twin then runs the same search on at least as
many seeds (never fewer than TWIN_SEEDS) and must find nothing while going
through the racy path the mutant breaks: the mutant's witness (a counter of
the guarded branch, a window where preemptions landed) must be non-zero.
A clean run that never reached the race would prove nothing.
"""

from __future__ import annotations

import pytest

from policies import scenarios
from stress.hunt import cpus_for, ops_for, plan
from stress.replay import mismatch, replay
from stress.report import evidence
from stress.runner import run

CORRECT = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]
MUTANTS = [(s.name, p.name) for s in scenarios().values() for p in s.mutants()]
TWIN_SEEDS = 12
TWIN_SEEDS_REACH = 48  # seeds a correct twin may take to go through the race, while it runs clean


@pytest.mark.parametrize("scenario,policy", CORRECT)
@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_correct_policy_has_no_finding_under_control(mmtorture_run, scenario, policy, scheduler):
    for seed in range(6):
        r = mmtorture_run(scenario, policy, cpus=2, ops=150, seed=seed, scheduler=scheduler)
        assert r.findings == [], (seed, [f.format() for f in r.findings])
        assert r.exit_code == 0
        assert r.report["ops"] == 300
        assert r.report["schedule"]["steps"] > 300


def test_refcount_under_pct_no_longer_runs_out_of_memory(mmtorture_run):
    """Regression: the grace-period kthread was not scheduled while an allocation gave up after
    a few wall-clock waits (`run -s refcount -p refcount_t --scheduler pct --ops 2000 --seed 3`)."""
    r = mmtorture_run("refcount", "refcount_t", cpus=2, ops=2000, seed=3, scheduler="pct")
    assert r.findings == [] and r.exit_code == 0
    assert r.report["ops"] == 4000 and r.report["callbacks"] > 0


@pytest.mark.parametrize("scenario,policy", CORRECT)
def test_correct_policy_has_no_finding_free_running(mmtorture_run, scenario, policy):
    r = mmtorture_run(scenario, policy, cpus=2, ops=2000, seed=11, window_rate=0.1)
    assert r.findings == [], [f.format() for f in r.findings]
    assert r.exit_code == 0
    assert r.report["ops"] == 4000
    assert r.report["stop_reason"] == "operation budget"


@pytest.mark.parametrize("scenario,policy", MUTANTS)
def test_mutant_is_caught_first_by_its_check_and_replays_10_of_10(hunted, scenario, policy):
    row = hunted(scenario, policy)
    assert row.error is None, row.error
    assert row.caught is not None, f"not caught in {row.seeds} seeds of {row.scheduler} on {row.program}"
    assert row.right_check, f"caught first by {row.caught}, it names {row.expected}"
    report = row.run_report
    assert report["caught"] is True and report["caught_by"] == row.caught
    f = report["findings"][0]
    assert f["trace"], "a finding carries the trace of its CPU"
    assert f["seed"] == report["seed"] == row.seed
    for i in range(10):
        again = replay(report)
        assert "diverged" not in again.report, (i, again.report["diverged"])
        assert mismatch(report, again) is None, (i, mismatch(report, again))
        assert again.report["schedule"]["deviations"] == report["schedule"]["deviations"]


@pytest.mark.parametrize("scenario,mutant", MUTANTS)
def test_correct_twin_survives_the_mutants_search_and_reaches_its_race(hunted, scenario, mutant):
    sc = scenarios()[scenario]
    p = sc.policy(mutant)
    row = hunted(scenario, mutant)
    assert row.caught is not None
    litmus = sc.litmus(p)
    seen = 0
    k = 0
    seed = 0
    while seed < max(row.seeds, TWIN_SEEDS) or (not seen and seed < TWIN_SEEDS_REACH):
        name, scheduler, programs = ("", "random", "uniform") if litmus else plan("mix", seed)
        r = run(
            scenario,
            p.twin,
            cpus=len(litmus) if litmus else cpus_for(name, seed, 2),
            ops=0 if litmus else ops_for(name, None),
            seed=seed,
            scheduler=scheduler,
            programs=programs,
            pct_steps=k if scheduler == "pct" else 0,
            program=litmus,
            progress="off",
        )
        assert r.findings == [], (seed, [f.format() for f in r.findings])
        assert r.exit_code == 0, r.report["harness_errors"]
        if scheduler == "pct":
            k = k or max(r.report["schedule"]["accesses"], 1)
        seen += evidence(r.report).get(p.witness, 0)
        seed += 1
    assert seen > 0, (
        f"{scenario}/{p.twin} never went through what {mutant} breaks ({p.witness}) in "
        f"{seed} seeds: its clean runs prove nothing"
    )
