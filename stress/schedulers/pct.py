"""The `pct` strategy: probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010), over accesses.

Each CPU gets a random distinct priority in d..d+n-1; d-1 change points are
drawn uniformly from the first k steps, where a step is a shared access of
any CPU (every load, store and atomic through shm), so a change point can
fall between any two accesses, not only at the windows the designer marked.
At every scheduling point the runnable CPU with the highest priority runs;
when the run reaches change point k_i, the CPU that is running drops to
priority i, below every initial one (the k_i are drawn independently, so the
order in time of the drops is random too).  A bug of depth d is found with
probability at least 1/(n*k^(d-1)) per run.

Windows are hints that weigh more: every other change point (by a coin per
point) takes effect at the first window reached at or after its step
instead of at the access itself, so a marked window is as likely to hold a
change point as a whole stretch of accesses.  The priorities and the change
points applied so far live in the scheduler segment, since whichever
process holds the token decides; the change points themselves follow from
the seed, the same in every process.
"""

from __future__ import annotations

import random

from stress.schedulers.controlled import WINDOW
from stress.schedulers.state import SchedState

ACCESSES_PER_OP = 100


class PctStrategy:
    name = "pct"
    preempts_accesses = True

    def __init__(self, seed: int, nparts: int, knobs: dict):
        self.seed = seed
        self.nparts = nparts
        self.depth = max(1, min(31, int(knobs.get("pct_depth", 3))))
        k = int(knobs.get("pct_steps", 0))
        if not k:
            k = max(16, ACCESSES_PER_OP * int(knobs.get("ops") or 1000) * max(1, nparts - 1))
        self.k = k
        rng = random.Random(f"pct:{seed}")
        self.priorities = rng.sample(range(self.depth, self.depth + nparts), nparts)
        # change point i lowers the running CPU to priority i+1 at access k_i (or the first window after)
        self.changes = [(rng.randrange(1, k + 1), i + 1, rng.random() < 0.5) for i in range(self.depth - 1)]

    def init(self, st: SchedState) -> None:
        for i, p in enumerate(self.priorities):
            st.mem.store64(st.prio_off[i], p)
        st.mem.store32(st.next_change_off, 0)

    def first(self, st: SchedState) -> int:
        return max(range(self.nparts), key=lambda i: self.priorities[i])

    def choose(self, st: SchedState, cur: int, cands: list[int], default: int, step: int, why: str) -> int:
        mem = st.mem
        done = mem.load32(st.next_change_off)
        now = mem.load64(st.accesses_off)
        for i, (at, low, at_window) in enumerate(self.changes):
            if not done >> i & 1 and now >= at and (why == WINDOW or not at_window):
                mem.store64(st.prio_off[cur], low)
                done |= 1 << i
        mem.store32(st.next_change_off, done)
        if len(cands) == 1:
            return cands[0]
        prio = st.prio_off
        return max(cands, key=lambda i: mem.load64(prio[i]))

    def countdown(self, st: SchedState, cur: int, gaccess: int) -> int:
        done = st.mem.load32(st.next_change_off)
        left = [at - gaccess for i, (at, _, w) in enumerate(self.changes) if not w and not done >> i & 1]
        return max(1, min(left)) if left else 0

    def bound(self) -> str:
        return f"1/({self.nparts}*{self.k}^{self.depth - 1})"

    def describe(self) -> dict:
        return {
            "depth": self.depth,
            "k": self.k,
            "change_points": [list(c) for c in self.changes],
            "priorities": self.priorities,
            "bound": self.bound(),
        }
