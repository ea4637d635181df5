"""The `random` strategy: at every scheduling point, a uniform choice among the CPUs that can run.

Stateless across processes: the choice at global step s is a hash of
(seed, s), so whichever process holds the token decides the same way.
"""

from __future__ import annotations

import math

from stress.schedulers.controlled import SchedState, splitmix64


def unit(x: int) -> float:
    """A uniform float in [0, 1) from a 64-bit hash."""
    return (x >> 11) / float(1 << 53)


def geometric(u: float, mean: float) -> int:
    """A draw of the geometric distribution on 1, 2, ... with the given mean, from u in [0, 1)."""
    if mean <= 1:
        return 1
    return 1 + int(math.log1p(-u) / math.log1p(-1.0 / mean))


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
