"""Every correct policy runs clean; every mutant is caught with the kind it names.

Under the controlled scheduler a run is a function of (scenario, policy,
seed, scheduler), so detection is deterministic: each mutant is tried on
the random strategy with seeds 0, 1, 2... in order and must be caught within
SEEDS (measured: every mutant is caught at seed 0 with 300 operations per
CPU).  Its report, replayed ten times, must give the same findings.  The
free-running scheduler keeps one statistical smoke test per correct policy.
"""

from __future__ import annotations

import pytest

from policies import scenarios
from stress.replay import mismatch, replay

CORRECT = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]
MUTANTS = [(s.name, p.name, p.expect) for s in scenarios().values() for p in s.mutants()]
SEEDS = range(4)


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
    tried = []
    for seed in SEEDS:
        r = mmtorture_run(scenario, policy, cpus=2, ops=300, seed=seed, scheduler="random")
        tried.append((seed, sorted(r.kinds)))
        if r.findings:
            break
    assert r.findings, f"not caught on seeds {list(SEEDS)}"
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
