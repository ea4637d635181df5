"""The boot CPU's scheduler: during setup and the quiescent phase a wait past its deadline is a
finding (a stall), not a hang, and a wait nobody else can end runs the queued RCU callbacks."""

from __future__ import annotations

import time

from shm.sched import OsScheduler


class TeardownStall(Exception):
    """The boot CPU waited past its deadline during setup or the quiescent phase, or (`alone`)
    waited when no other CPU was left to end the wait."""

    def __init__(self, alone: bool = False):
        super().__init__()
        self.alone = alone


class DeadlineScheduler(OsScheduler):
    """The boot CPU's scheduler: a wait past the deadline is a finding, not a hang.  Alone in the
    quiescent phase, it invokes the RCU callbacks queued before it would wait (Rcu.drain)."""

    name = "deadline"

    def __init__(self) -> None:
        self.deadline: float | None = None

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TeardownStall()
        return left

    def _alone(self, cpu) -> bool:
        """Alone (the kthread stopped): run the queued callbacks, else nobody can end a wait."""
        rcu = cpu.machine.rcu
        if rcu.drain(cpu):
            return True
        if rcu.stopped():
            raise TeardownStall(alone=True)
        return False

    def spin(self, cpu, attempt: int, mem=None, off: int = 0, seen: int = 0, bits: int = 32) -> None:
        self._remaining()
        if not self._alone(cpu):
            super().spin(cpu, attempt, mem, off, seen, bits)

    def block(self, cpu, mem, off, expected, timeout):
        if self._alone(cpu):
            return True
        left = self._remaining()
        if left is not None:
            timeout = left if timeout is None else min(timeout, left)
        return mem.futex_wait(off, expected, timeout)
