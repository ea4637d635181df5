"""The `replay` strategy: no decision of its own.

The current CPU keeps running and, when it cannot, the next runnable one in
slot order; the recorded deviations (the controlled scheduler's Replay
table) say where to switch instead.  Strict replay reports a schedule that
no longer fits as divergent; lenient replay (shrinking, Hypothesis) takes
the nearest runnable CPU, so any list of preemptions is a valid schedule.
"""

from __future__ import annotations

from stress.schedulers.state import SchedState


class ReplayStrategy:
    name = "replay"
    preempts_accesses = False

    def __init__(self, seed: int, nparts: int, knobs: dict, first: int = 0):
        self.nparts = nparts
        self._first = first

    def init(self, st: SchedState) -> None:
        pass

    def first(self, st: SchedState) -> int:
        return self._first

    def choose(self, st: SchedState, cur: int, cands: list[int], default: int, step: int, why: str) -> int:
        return default

    def countdown(self, st: SchedState, cur: int, gaccess: int) -> int:
        return 0

    def describe(self) -> dict:
        return {}
