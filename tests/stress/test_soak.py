"""Soak: every correct policy, free-running on more CPUs than cores, for long.

Runs only when asked (`pytest --soak` or `-m soak`): what CI's nightly job
and a developer before a release run; `make test` skips it."""

from __future__ import annotations

import pytest

from policies import scenarios

CORRECT = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]


@pytest.mark.soak
@pytest.mark.parametrize("scenario,policy", CORRECT)
@pytest.mark.parametrize("seed", range(3))
def test_correct_policy_survives_a_soak(mmtorture_run, scenario, policy, seed):
    r = mmtorture_run(scenario, policy, cpus=4, ops=20_000, seed=seed, window_rate=0.05, stall_timeout=60)
    assert r.findings == [], [f.format() for f in r.findings]
    assert r.exit_code == 0
