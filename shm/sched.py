"""The scheduling points of the machine, delegated to a scheduler object.

Every place a CPU could be preempted (`cpu.window(name)`), spins, or sleeps
on a futex goes through the CPU's scheduler, so a strategy (free-running,
random delays, a controlled one-CPU-at-a-time token) can be swapped without
touching the primitives.  Like shuttle's Scheduler trait, it is small.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from shm._atomic import cpu_relax
from shm.protocols import CpuLike as Cpu

if TYPE_CHECKING:
    from shm._atomic import Memory

SPINS_BEFORE_YIELD = 64


class OsScheduler:
    """Real OS scheduling and nothing injected: the machine as it is."""

    name = "os"

    def attach(self, cpu: Cpu) -> None:
        pass

    def window(self, cpu: Cpu, name: str) -> bool:
        return False

    def spin(
        self, cpu: Cpu, attempt: int, mem: Memory | None = None, off: int = 0, seen: int = 0, bits: int = 32
    ) -> None:
        if attempt < SPINS_BEFORE_YIELD:
            cpu_relax()
        else:
            os.sched_yield()

    def block(self, cpu: Cpu, mem: Memory, off: int, expected: int, timeout: float | None) -> bool:
        return mem.futex_wait(off, expected, timeout)

    def op_boundary(self, cpu: Cpu) -> None:
        pass

    def begin(self, cpu: Cpu) -> None:
        pass

    def exit(self, cpu: Cpu) -> None:
        pass
