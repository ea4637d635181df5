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


@pytest.fixture(autouse=True)
def no_segment_left_behind():
    before = _ours()
    yield
    left = _ours() - before
    assert not left, f"segments left in /dev/shm: {sorted(left)}"
