"""rw_semaphore torture, as locktorture's rwsem_lock: readers see the guarded pair equal, writers
are alone (the scenario's counters and checks are the lock scenarios', policies/primitives/locks.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.primitives.locks import (
    EXCLUSION,
    LOCKTORTURE,
    LOST_UPDATE,
    NLOCKS,
    GuardedCounters,
    add_guarded,
    enter_critical,
    leave_critical,
    mark_acquired,
)
from policies.scenario import Arg, Operation, Policy, World, mutant
from shm import RWSEM, Cpu, Rwsem
from shm.checks import LOCK_BAD_UNLOCK
from shm.locks import RWSEM_LOCKED


@dataclass(frozen=True, kw_only=True)
class RwsemPolicy(Policy):
    down_read: Callable[[Rwsem, Cpu], None]
    up_read: Callable[[Rwsem, Cpu], None]
    down_write: Callable[[Rwsem, Cpu], None]
    up_write: Callable[[Rwsem, Cpu], None]


def up_read_twice(sem: Rwsem, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: the read side is released twice (an error path and the common exit).

    Must trip lock.bad-unlock (the second up_read is of a lock this CPU does not hold)."""
    sem.up_read(cpu)
    sem.up_read(cpu)


def busted_down_write(sem: Rwsem, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: the writer sets the writer bit but does not wait for readers.

    New readers are held off, the ones already inside carry on and see a
    half-done update.  Must trip locktorture.exclusion."""
    cpu.might_sleep("down_write")
    mem, off = sem.mem, sem.off
    attempt = 0
    while True:
        c = mem.load32(off)
        if not c & RWSEM_LOCKED:
            seen = mem.cmpxchg32(off, c, c | RWSEM_LOCKED)
            if seen == c:
                break
            if not seen & RWSEM_LOCKED:
                continue
            c = seen
        cpu.sched.spin(cpu, attempt, mem, off, c)
        attempt += 1
    mem.store32(off + 4, cpu.owner_id)
    mark_acquired(cpu, sem)


class RwsemScenario(GuardedCounters):
    name = "rwsem"
    doc = "rw_semaphore: readers see a and b equal, writers exclusive (locktorture rwsem_lock)"
    lock_dtype = RWSEM
    handle = Rwsem

    def operations(self, policy: RwsemPolicy) -> tuple[Operation, ...]:
        down_read, up_read = policy.down_read, policy.up_read
        down_write, up_write = policy.down_write, policy.up_write

        def read(w: World, i: int) -> None:
            L = w.locks[i]
            mem, cpu = w.mem, w.cpu
            down_read(L, cpu)
            mem.fetch_add32(w.readers_off[i], 1)
            writer = mem.load32(w.holder_off[i])
            a = mem.load64(w.a_off[i])
            cpu.window("read:between-a-and-b")
            b = mem.load64(w.b_off[i])
            if writer or a != b:
                cpu.report(
                    EXCLUSION,
                    f"reader of {L.name()} overlapped a writer"
                    + (f" (cpu {writer - 1} inside)" if writer else "")
                    + (f": saw a={a} b={b}" if a != b else ""),
                    lock=L.name(),
                )
            mem.fetch_sub32(w.readers_off[i], 1)
            up_read(L, cpu)

        def write(w: World, i: int) -> None:
            L = w.locks[i]
            mem, cpu = w.mem, w.cpu
            down_write(L, cpu)
            enter_critical(w, i)
            readers = mem.load32(w.readers_off[i])
            if readers:
                cpu.report(EXCLUSION, f"writer of {L.name()} inside with {readers} readers inside", lock=L.name())
            mem.store64(w.a_off[i], mem.load64(w.a_off[i]) + 1)
            cpu.window("write:between-a-and-b")
            mem.store64(w.b_off[i], mem.load64(w.b_off[i]) + 1)
            add_guarded(w, i)
            leave_critical(w, i)
            up_write(L, cpu)

        which = Arg("lock", NLOCKS)
        return (Operation("read", 6, read, (which,)), Operation("write", 3, write, (which,)))

    def sweep(self, w: World) -> None:
        super().sweep(w)
        g = w.view("guarded")
        for i in np.flatnonzero((g["a"] != g["b"]) | (g["a"] != g["counter"])):
            w.cpu.report(
                LOST_UPDATE,
                f"rwsem record {i} inconsistent at the end: a={int(g['a'][i])} "
                f"b={int(g['b'][i])} counter={int(g['counter'][i])}",
            )


rwsem_lock = RwsemPolicy(
    "rwsem_lock",
    doc="shm's rw_semaphore: reader count, writer bit, waiting-writer bit, futex sleep",
    down_read=Rwsem.down_read,
    up_read=Rwsem.up_read,
    down_write=Rwsem.down_write,
    up_write=Rwsem.up_write,
)
RwsemScenario.policies = (
    rwsem_lock,
    # DELIBERATELY BROKEN below.
    mutant(
        rwsem_lock,
        "busted",
        EXCLUSION,
        f"{LOCKTORTURE}: a writer that does not wait for the readers to drain",
        "down_write sets the writer bit without waiting for readers",
        "lock_waits",
        down_write=busted_down_write,
    ),
    mutant(
        rwsem_lock,
        "up_read_twice",
        LOCK_BAD_UNLOCK,
        "kernel/locking/rwsem.c: DEBUG_RWSEMS_WARN_ON on an up_read the reader does not hold",
        "a reader's error path releases its read lock twice",
        "op:read",
        up_read=up_read_twice,
    ),
)

register(RwsemScenario())

__all__ = ["RwsemPolicy", "busted_down_write"]
