"""The scheduling points of the machine, delegated to a scheduler object.

Every place a CPU could be preempted (`cpu.window(name)`), spins, or sleeps
on a futex goes through the CPU's scheduler, so a strategy (free-running,
random delays, a controlled one-CPU-at-a-time token) can be swapped without
touching the primitives.  Like shuttle's Scheduler trait, it is small.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

from shm._atomic import cpu_relax

if TYPE_CHECKING:
    from shm._atomic import Memory
    from shm.cpu import Cpu

SPINS_BEFORE_YIELD = 64


class Scheduler(Protocol):
    name: str

    def attach(self, cpu: Cpu) -> None:
        """Bind to the CPU this process is; called once before it runs."""

    def window(self, cpu: Cpu, name: str) -> bool:
        """A preemption point in policy code; True if another CPU ran or a delay was injected."""

    def spin(
        self, cpu: Cpu, attempt: int, mem: Memory | None = None, off: int = 0, seen: int = 0, bits: int = 32
    ) -> None:
        """One iteration of a spin loop (lock contention, waiting for a counter).

        When the loop waits for one word to change, it names it (`mem`, `off`,
        the value `seen`, 32 or 64 `bits`): a controlled scheduler then runs
        the CPU again only once the word differs, so a spin costs one switch."""

    def block(self, cpu: Cpu, mem: Memory, off: int, expected: int, timeout: float | None) -> bool:
        """Sleep while the 32-bit word at off equals expected; False on timeout."""

    def op_boundary(self, cpu: Cpu) -> None:
        """Between two operations of the CPU's program."""

    def begin(self, cpu: Cpu) -> None:
        """The CPU starts running its program (after the start barrier)."""

    def exit(self, cpu: Cpu) -> None:
        """The CPU has finished its program and leaves the machine."""


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
