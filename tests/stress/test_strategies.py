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

SETTINGS = settings(
    max_examples=500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate, Phase.shrink],
)

FAMILIES = [
    ("refcount", "nonatomic_inc", "refcount_t", ("refcount.underflow", "pool.uaf")),
    ("seqcount", "no_retry", "seqcount", ("seqcount.torn-read",)),
    ("spinlock", "busted", "spin_lock", ("locktorture.exclusion", "lock.bad-unlock")),
]


def search(scenario: str, policy: str, checks: tuple[str, ...]) -> tuple[list, dict] | None:
    """The smallest (program, schedule) Hypothesis finds whose first finding is one of checks."""
    found: list = []

    @SETTINGS
    @given(data=st.data())
    def prop(data):
        program = data.draw(programs(scenario, policy, ncpus=2, max_ops=2))
        schedule = data.draw(schedules(program, max_preemptions=4))
        r = run_program(scenario, policy, program, schedule)
        if r.findings and r.findings[0].check in checks:
            found.append((program, schedule))
            raise AssertionError(f"{policy}: {r.findings[0].headline()}")

    try:
        prop()
    except AssertionError:
        return found[-1]
    return None


@pytest.mark.parametrize("scenario,mutant,correct,checks", FAMILIES)
def test_hypothesis_shrinks_a_mutant_to_a_small_counterexample(scenario, mutant, correct, checks):
    found = search(scenario, mutant, checks)
    assert found is not None, f"{scenario}/{mutant} not found by Hypothesis"
    program, schedule = found
    ops = sum(len(p) for p in program)
    preemptions = sum(len(d) for d in schedule["deviations"])
    assert ops <= 4 and preemptions <= 3, (program, schedule)
    r = run_program(scenario, mutant, program, schedule)
    assert r.findings[0].check in checks, "the counterexample replays"


@pytest.mark.parametrize("scenario,mutant,correct,checks", FAMILIES[:1])
def test_the_correct_twin_survives_the_same_search(scenario, mutant, correct, checks):
    assert search(scenario, correct, checks) is None
