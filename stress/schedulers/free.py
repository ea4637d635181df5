"""Free-running: real OS scheduling, with seeded random delays at windows and at sampled accesses.

Like KCSAN's and rcutorture's injected delays.  At a `cpu.window()` the
CPU, with probability `rate`, yields the processor or waits a random time up
to `max_delay_us`, which widens the race windows the policy marked.  With
`delay_every`, it also stops just before a shared access after a geometric
number of accesses (mean `delay_every`, the C countdown of shm._atomic, so
an access that is not sampled costs an increment): KCSAN's watchpoints
sample accesses the same way, and it widens every window, marked or not.
"""

from __future__ import annotations

import os
import random
import time

from shm._atomic import cpu_relax, set_countdown, set_hook

from shm.sched import OsScheduler
from stress.schedulers.rand import geometric

DELAY_EVERY = 500


class FreeScheduler(OsScheduler):
    name = "free"

    def __init__(self, seed: int = 0, rate: float = 0.0, max_delay_us: float = 50.0, delay_every: int = 0):
        self.seed = seed
        self.rate = rate
        self.max_delay = max_delay_us / 1e6
        self.delay_every = delay_every
        self.rng = random.Random(seed)
        self.delays = 0

    def attach(self, cpu) -> None:
        self.rng = random.Random((self.seed << 8) ^ (cpu.id + 0x5EED))
        if self.delay_every:
            set_hook(self._on_access)
            set_countdown(geometric(self.rng.random(), self.delay_every))

    def exit(self, cpu) -> None:
        if self.delay_every:
            set_hook(None)

    def _on_access(self, kind: int, tag: int, off: int) -> None:
        self._delay()
        set_countdown(geometric(self.rng.random(), self.delay_every))

    def window(self, cpu, name: str) -> bool:
        if not self.rate or self.rng.random() >= self.rate:
            return False
        self._delay()
        return True

    def _delay(self) -> None:
        rng = self.rng
        self.delays += 1
        if rng.random() < 0.5:
            os.sched_yield()
            return
        delay = rng.random() * self.max_delay
        if delay > 100e-6:
            time.sleep(delay)
            return
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            cpu_relax()
