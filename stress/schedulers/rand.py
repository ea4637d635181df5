"""The `random` strategy: uniform choices at boundaries, a per-seed coin at windows, sparse preemptions at accesses.

At a spin or an operation boundary the next CPU is a uniform choice among
those that can run.  A window is a hint, where a preemption is likeliest to
matter: there the running CPU is preempted with a probability drawn per
seed, 1/2 for half the seeds (a fair coin: fine interleavings, as a fork
racing a fault needs) and log-uniform from 1/32 to 1/2 for the others.  A
seed with a rare switch lets the CPU that takes over run a whole operation
(a munmap from its unhook to its free) before the one it preempted goes on,
which a coin at every window almost never does.  Between
them, the running CPU is preempted just before a shared access after a
geometric number of accesses (mean `preempt_every`; by default drawn per
seed, log-uniform from 8 to 4096, so that some seeds preempt densely and
others let whole operations run), in favour of a uniform choice among the
others: a race between two accesses with no window between them is
reachable too.

A preempted CPU may be held, as a KCSAN delay holds the access it stops
at: on half the seeds it is not run again (while another can run) until
the others have finished a geometric number of operations (mean drawn per
seed, log-uniform from 1 to 8).  A coin must otherwise come up "stay" at
every window of the CPU that took over for it to run a few operations
while the other waits in its gap (a munmap between its zap and its flush,
while a fault maps the range again and a stale TLB entry is used); held,
the other waits whatever the coins say.  Delay-bounded scheduling (Emmi,
Qadeer and Rakamarić, POPL 2011) explores the same shape: few delays, each
one long.

Stateless across processes: every draw is a hash of (seed, global step or
global access count), so whichever process holds the token decides alike.
"""

from __future__ import annotations

import math

from stress.schedulers.controlled import ACCESS, BOUNDARY, WINDOW
from stress.schedulers.state import SchedState, splitmix64

EVERY_RANGE = (8, 4096)
SWITCH_RANGE = (1 / 32, 1 / 2)
HOLD_RANGE = (1, 8)


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
    preempts_accesses = True

    def __init__(self, seed: int, nparts: int, knobs: dict):
        self.seed = seed & 0xFFFFFFFF
        self.nparts = nparts
        every = int(knobs.get("preempt_every") or 0)
        if not every:
            lo, hi = EVERY_RANGE
            every = round(lo * (hi / lo) ** unit(splitmix64((self.seed << 32) ^ 0xE7E4)))
        self.every = every
        low, high = SWITCH_RANGE
        u = unit(splitmix64((self.seed << 32) ^ 0x5717C4))
        self.switch = high if u < 0.5 else low * (high / low) ** (2 * u - 1)
        low, high = HOLD_RANGE
        u = unit(splitmix64((self.seed << 32) ^ 0x401D))
        self.hold = 0.0 if u < 0.5 else low * (high / low) ** (2 * u - 1)

    def init(self, st: SchedState) -> None:
        pass

    def first(self, st: SchedState) -> int:
        return splitmix64(self.seed << 32) % self.nparts

    def choose(self, st: SchedState, cur: int, cands: list[int], default: int, step: int, why: str) -> int:
        if not self.hold:
            return self._choose(cur, cands, step, why)
        mem, until = st.mem, st.held_until_off
        done = mem.load64(st.boundaries_off) + (why == BOUNDARY)
        if why == BOUNDARY:
            mem.store64(st.boundaries_off, done)
        free = [c for c in cands if c == cur or mem.load64(until[c]) <= done]
        choice = self._choose(cur, free or cands, step, why)
        if choice != cur and why in (WINDOW, ACCESS):
            u = unit(splitmix64(splitmix64((self.seed << 32) ^ (step + 1)) ^ 0x401D))
            mem.store64(until[cur], done + geometric(u, self.hold))
        if mem.load64(until[choice]) > done:
            mem.store64(until[choice], 0)  # it runs because nothing else can: its hold is over
        return choice

    def _choose(self, cur: int, cands: list[int], step: int, why: str) -> int:
        if len(cands) == 1:
            return cands[0]
        h = splitmix64((self.seed << 32) ^ (step + 1))
        if why == WINDOW and cur in cands:
            if unit(h) >= self.switch:
                return cur
            why = ACCESS
        if why == ACCESS:
            others = [c for c in cands if c != cur]
            return others[h % len(others)]
        return cands[h % len(cands)]

    def countdown(self, st: SchedState, cur: int, gaccess: int) -> int:
        return geometric(unit(splitmix64((self.seed << 40) ^ (gaccess * 64 + cur) ^ 0xACCE55)), self.every)

    def describe(self) -> dict:
        return {"preempt_every": self.every, "window_switch": round(self.switch, 4), "hold_ops": round(self.hold, 2)}
