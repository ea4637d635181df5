"""Free-running: real OS scheduling, with seeded random delays at preemption windows.

Like KCSAN's and rcutorture's injected delays: at a `cpu.window()` the CPU,
with probability `rate`, yields the processor or waits a random time up to
`max_delay_us`, which widens exactly the race windows the policy marked.
"""

from __future__ import annotations

import os
import random
import time

from shm._atomic import cpu_relax

from shm.sched import OsScheduler


class FreeScheduler(OsScheduler):
    name = "free"

    def __init__(self, seed: int = 0, rate: float = 0.0, max_delay_us: float = 50.0):
        self.seed = seed
        self.rate = rate
        self.max_delay = max_delay_us / 1e6
        self.rng = random.Random(seed)
        self.delays = 0

    def attach(self, cpu) -> None:
        self.rng = random.Random((self.seed << 8) ^ (cpu.id + 0x5EED))

    def window(self, cpu, name: str) -> bool:
        rng = self.rng
        if not self.rate or rng.random() >= self.rate:
            return False
        self.delays += 1
        if rng.random() < 0.5:
            os.sched_yield()
            return True
        delay = rng.random() * self.max_delay
        if delay > 100e-6:
            time.sleep(delay)
            return True
        end = time.perf_counter() + delay
        while time.perf_counter() < end:
            cpu_relax()
        return True

