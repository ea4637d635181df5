"""Every correct policy runs clean; every mutant is caught with the kind it names.

Under the controlled scheduler a run is a function of (scenario, policy,
seed, scheduler), so detection is deterministic: each mutant is tried on
the random strategy with seeds 0, 1, 2... in order and must be caught within
SEEDS (measured: every primitive mutant is caught at seed 0 with 300
operations per CPU).  A mutant whose scenario gives it a litmus program is
tried on that program instead, seeds 0..99 in order (the mm races need the
program; `mmtorture hunt` measures the seeds).  Its report, replayed ten
times, must give the same findings, and its correct twin must pass the
same program.  The free-running scheduler keeps one statistical smoke test
per correct policy.
"""

from __future__ import annotations

import pytest

from policies import scenarios
from stress.replay import mismatch, replay

CORRECT = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]
MUTANTS = [(s.name, p.name, p.expect) for s in scenarios().values() for p in s.mutants()]
LITMUS = [(s.name, p.name, p.twin) for s in scenarios().values() for p in s.mutants() if s.litmus(p)]
SEEDS = range(4)
LITMUS_SEEDS = range(100)


@pytest.mark.parametrize("scenario,policy", CORRECT)
@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_correct_policy_has_no_finding_under_control(mmtorture_run, scenario, policy, scheduler):
    for seed in range(6):
        r = mmtorture_run(scenario, policy, cpus=2, ops=150, seed=seed, scheduler=scheduler)
        assert r.findings == [], (seed, [f.format() for f in r.findings])
        assert r.exit_code == 0
        assert r.report["ops"] == 300
        assert r.report["schedule"]["steps"] > 300


@pytest.mark.parametrize("scenario,policy", CORRECT)
def test_correct_policy_has_no_finding_free_running(mmtorture_run, scenario, policy):
    r = mmtorture_run(scenario, policy, cpus=2, ops=2000, seed=11, window_rate=0.1)
    assert r.findings == [], [f.format() for f in r.findings]
    assert r.exit_code == 0
    assert r.report["ops"] == 4000
    assert r.report["stop_reason"] == "operation budget"


@pytest.mark.parametrize("scenario,policy,expect", MUTANTS)
def test_mutant_is_caught_and_its_report_replays_10_of_10(mmtorture_run, scenario, policy, expect):
    """On its litmus program if it has one (seeds 0..99 in order), else on generated programs."""
    sc = scenarios()[scenario]
    litmus = sc.litmus(sc.policy(policy))
    tried = []
    for seed in LITMUS_SEEDS if litmus else SEEDS:
        if litmus:
            r = mmtorture_run(scenario, policy, cpus=len(litmus), seed=seed, scheduler="random", program=litmus)
        else:
            r = mmtorture_run(scenario, policy, cpus=2, ops=300, seed=seed, scheduler="random")
        tried.append((seed, sorted(r.kinds)))
        if r.findings:
            break
    assert r.findings, f"not caught on seeds {[t[0] for t in tried]}"
    assert r.findings[0].kind in expect, tried
    assert r.exit_code == 1
    assert r.report["caught"] is True
    f = r.findings[0]
    assert f.trace, "a finding carries the trace of its CPU"
    assert f.seed == r.report["seed"]
    for i in range(10):
        again = replay(r.report)
        assert "diverged" not in again.report, (i, again.report["diverged"])
        assert mismatch(r.report, again) is None, (i, mismatch(r.report, again))
        assert again.report["schedule"]["deviations"] == r.report["schedule"]["deviations"]


@pytest.mark.parametrize("scenario,mutant,twin", LITMUS)
@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_correct_twin_passes_the_mutants_litmus_program(mmtorture_run, scenario, mutant, twin, scheduler):
    """The program that breaks the mutant is one the correct policy survives under every schedule tried."""
    sc = scenarios()[scenario]
    litmus = sc.litmus(sc.policy(mutant))
    for seed in range(12):
        r = mmtorture_run(scenario, twin, cpus=len(litmus), seed=seed, scheduler=scheduler, program=litmus)
        assert r.findings == [], (seed, [f.format() for f in r.findings])
        assert r.exit_code == 0
