"""The `random` strategy: at every scheduling point, a uniform choice among the CPUs that can run.

Stateless across processes: the choice at global step s is a hash of
(seed, s), so whichever process holds the token decides the same way.
"""

from __future__ import annotations

from stress.schedulers.controlled import SchedState, splitmix64


class RandomStrategy:
    name = "random"

    def __init__(self, seed: int, nparts: int, knobs: dict):
        self.seed = seed & 0xFFFFFFFF
        self.nparts = nparts

    def init(self, st: SchedState) -> None:
        pass

    def first(self, st: SchedState) -> int:
        return splitmix64(self.seed << 32) % self.nparts

    def choose(self, st: SchedState, cur: int, cands: list[int], default: int, step: int) -> int:
        if len(cands) == 1:
            return cands[0]
        return cands[splitmix64((self.seed << 32) ^ (step + 1)) % len(cands)]

    def describe(self) -> dict:
        return {}
