"""The `pct` strategy: probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010).

Each CPU gets a random distinct priority in d..d+n-1; d-1 change points are
drawn uniformly from the first k steps.  At every step the runnable CPU with
the highest priority runs; when the run reaches change point k_i, the CPU
that is running drops to priority i, below every initial one (the k_i are
drawn independently, so the order in time of the drops is random too).  A bug of depth d
is found with probability at least 1/(n*k^(d-1)) per run.  The priorities
and the index of the next change point live in the scheduler segment, since
whichever process holds the token decides; the change points themselves
follow from the seed, the same in every process.
"""

from __future__ import annotations

import random

from stress.schedulers.controlled import SchedState


class PctStrategy:
    name = "pct"

    def __init__(self, seed: int, nparts: int, knobs: dict):
        self.seed = seed
        self.nparts = nparts
        self.depth = max(1, int(knobs.get("pct_depth", 3)))
        k = int(knobs.get("pct_steps", 0))
        if not k:
            k = max(16, 4 * int(knobs.get("ops") or 1000) * max(1, nparts - 1))
        self.k = k
        rng = random.Random(f"pct:{seed}")
        self.priorities = rng.sample(range(self.depth, self.depth + nparts), nparts)
        # change point k_i lowers the running CPU to priority i; the k_i are not in order of i
        self.changes = sorted((rng.randrange(1, k + 1), i + 1) for i in range(self.depth - 1))

    def init(self, st: SchedState) -> None:
        for i, p in enumerate(self.priorities):
            st.mem.store64(st.prio_off[i], p)
        st.mem.store32(st.next_change_off, 0)

    def first(self, st: SchedState) -> int:
        return max(range(self.nparts), key=lambda i: self.priorities[i])

    def choose(self, st: SchedState, cur: int, cands: list[int], default: int, step: int) -> int:
        mem = st.mem
        nc = mem.load32(st.next_change_off)
        changes = self.changes
        while nc < len(changes) and step >= changes[nc][0]:
            mem.store64(st.prio_off[cur], changes[nc][1])
            nc += 1
            mem.store32(st.next_change_off, nc)
        if len(cands) == 1:
            return cands[0]
        prio = st.prio_off
        return max(cands, key=lambda i: mem.load64(prio[i]))

    def bound(self) -> str:
        return f"1/({self.nparts}*{self.k}^{self.depth - 1})"

    def describe(self) -> dict:
        return {"depth": self.depth, "k": self.k, "change_points": self.changes,
                "priorities": self.priorities, "bound": self.bound()}
