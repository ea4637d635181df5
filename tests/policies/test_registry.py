"""The registry and the shape of policies: mutants say what they break and what they give."""

from __future__ import annotations

import pytest

from policies import Policy, get_scenario, mutant, scenarios
from shm.checks import POOL_LEAK, get_check


def test_every_scenario_has_a_correct_default_and_named_mutants():
    for s in scenarios().values():
        assert not s.default_policy().mutant
        assert s.policy(None) is s.default_policy()
        for p in s.mutants():
            assert p.expect and all(get_check(c) for c in p.expect) and p.source and p.doc and p.witness
            assert len(p.expect) <= 2, f"{s.name}/{p.name}: a mutant names the check it trips, not a list"


def test_a_mutant_differs_from_its_twin_only_in_what_it_breaks():
    s = get_scenario("spinlock")
    correct, busted = s.policy("spin_lock"), s.policy("busted")
    assert busted.unlock is correct.unlock and busted.lock is not correct.lock


def test_a_mutant_must_name_its_check_source_and_witness():
    base = Policy("p")
    with pytest.raises(ValueError):
        mutant(base, "m", (), "src", "doc", "op:x")
    with pytest.raises(LookupError):
        Policy("m", mutant=True, expect=("no.such-check",), source="src", witness="op:x")
    with pytest.raises(ValueError):
        mutant(base, "m", POOL_LEAK, "", "doc", "op:x")
    with pytest.raises(ValueError):
        mutant(base, "m", POOL_LEAK, "src", "doc", "")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(LookupError, match="known: .*spinlock"):
        get_scenario("nosuch")
    with pytest.raises(LookupError, match="known: rcu, no_wait_gp"):
        get_scenario("rcu").policy("nosuch")
