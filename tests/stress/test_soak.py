"""Soak: every correct policy, long, free-running on more CPUs than cores, and on many seeds.

Runs only when asked (`pytest --soak` or `-m soak`): what CI's nightly job
and a developer before a release run; `make test` skips it.  Each run is
bounded by operations (asserted), not by the clock; the watchdog turns a
hang into a finding."""

from __future__ import annotations

import pytest

from policies import scenarios

CORRECT = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]


@pytest.mark.soak
@pytest.mark.parametrize("scenario,policy", CORRECT)
@pytest.mark.parametrize("seed", range(3))
def test_correct_policy_survives_a_soak_on_4_cpus(mmtorture_run, scenario, policy, seed):
    r = mmtorture_run(scenario, policy, cpus=4, ops=20_000, seed=seed, window_rate=0.05, stall_timeout=60)
    assert r.findings == [], [f.format() for f in r.findings]
    assert r.exit_code == 0
    assert r.report["ops"] == 80_000 and r.report["stop_reason"] == "operation budget"


@pytest.mark.soak
@pytest.mark.parametrize("scenario,policy", CORRECT)
@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_correct_policy_is_clean_on_40_controlled_seeds(mmtorture_run, scenario, policy, scheduler):
    for seed in range(40):
        r = mmtorture_run(scenario, policy, cpus=2, ops=2000, seed=seed, scheduler=scheduler)
        assert r.findings == [], (seed, [f.format() for f in r.findings])
        assert r.exit_code == 0 and r.report["ops"] == 4000
