"""Every test must leave /dev/shm as it found it (a leftover segment is a failing test)."""

from __future__ import annotations

import os

import pytest

from shm.segment import list_segments, parse_name, worker_tag

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "fixtures")
HARNESS_SCENARIOS = os.path.join(FIXTURES, "harness_scenarios.py")


def _ours() -> set[str]:
    worker = worker_tag()
    return {n for n in list_segments() if parse_name(n)[2] == worker}


_HUNTS: dict = {}


@pytest.fixture
def hunted():
    """A mutant searched as `mmtorture hunt --litmus` searches it: blind (random, swarm and pct
    by turns), or on its litmus program where it has one, as a regression test (with `want`,
    until that check is first); each search is made once per test process, since several tests
    look at it."""
    from stress.hunt import hunt_mutant

    def search(scenario: str, mutant: str, want: str | None = None):
        first = _HUNTS.get((scenario, mutant, None))
        if want is not None and first is not None and first.caught == want:
            return first
        key = (scenario, mutant, want)
        if key not in _HUNTS:
            _HUNTS[key] = hunt_mutant(scenario, mutant, max_seeds=200, want=want, litmus=True)
        return _HUNTS[key]

    return search


@pytest.fixture(autouse=True)
def no_segment_left_behind():
    before = _ours()
    yield
    left = _ours() - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"
