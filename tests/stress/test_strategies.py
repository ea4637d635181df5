"""Hypothesis drives every scheduling decision; a failure shrinks to a small interleaving.

For one mutant of each family (a lost update, a reader that does not
retry, a lock that is not atomic) Hypothesis searches
programs and schedules until the mutant's finding appears, then shrinks;
the counterexample it ends with must be small.  Runs are deterministic
functions of the drawn data, so there is no FlakyFailure.  The correct twin
of each family survives the same search.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from stress.strategies import programs, run_program, schedules

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])

FAMILIES = [
    ("refcount", "nonatomic_inc", "refcount_t", ("refcount", "use-after-free", "double-free")),
    ("seqcount", "no_retry", "seqcount", ("invariant",)),
    ("spinlock", "busted", "spin_lock", ("invariant", "lock-misuse")),
]


def search(scenario: str, policy: str, kinds: tuple[str, ...]) -> tuple[list, dict] | None:
    """The smallest (program, schedule) Hypothesis finds that produces one of kinds."""
    found: list = []

    @SETTINGS
    @given(data=st.data())
    def prop(data):
        program = data.draw(programs(scenario, policy, ncpus=2, max_ops=3))
        schedule = data.draw(schedules(program, max_preemptions=4))
        r = run_program(scenario, policy, program, schedule)
        if any(f.kind in kinds for f in r.findings):
            found.append((program, schedule))
            raise AssertionError(f"{policy}: {r.findings[0].headline()}")

    try:
        prop()
    except AssertionError:
        return found[-1]
    return None


@pytest.mark.parametrize("scenario,mutant,correct,kinds", FAMILIES)
def test_hypothesis_shrinks_a_mutant_to_a_small_counterexample(scenario, mutant, correct, kinds):
    found = search(scenario, mutant, kinds)
    assert found is not None, f"{scenario}/{mutant} not found by Hypothesis"
    program, schedule = found
    ops = sum(len(p) for p in program)
    preemptions = sum(len(d) for d in schedule["deviations"])
    assert ops <= 4 and preemptions <= 3, (program, schedule)
    r = run_program(scenario, mutant, program, schedule)
    assert any(f.kind in kinds for f in r.findings), "the counterexample replays"


@pytest.mark.parametrize("scenario,mutant,correct,kinds", FAMILIES[:1])
def test_the_correct_twin_survives_the_same_search(scenario, mutant, correct, kinds):
    assert search(scenario, correct, kinds) is None
