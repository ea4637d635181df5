"""Lock torture, as locktorture does it (kernel/locking/locktorture.c).

CPUs increment plain (non-atomic) counters guarded by a lock: a load, a
preemption window, a store.  Mutual exclusion is checked online (a holder
word set on entry and cleared on exit) and at the end (each counter equals
the sum of what the CPUs say they added).  Pairs of locks are taken in a
policy-chosen order, so a lock-order inversion shows up as a deadlock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.scenario import Arg, Operation, Policy, Region, Scenario, World, mutant
from shm import MUTEX, RWSEM, SPINLOCK, Cpu, Mutex, Rwsem, Spinlock
from shm.events import EV, SEQ_MASK, TRACE_MASK
from shm.locks import RWSEM_LOCKED

NLOCKS = 4
LOCKTORTURE = "kernel/locking/locktorture.c"


def guarded(lock_dtype: np.dtype) -> np.dtype:
    return np.dtype(
        [
            ("lock", lock_dtype),
            ("holder", "<i4"),
            ("readers_in", "<i4"),
            ("counter", "<i8"),
            ("a", "<i8"),
            ("b", "<i8"),
        ],
        align=True,
    )


def ascending(flip: int, i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


def either_order(flip: int, i: int, j: int) -> tuple[int, int]:
    """DELIBERATELY BROKEN: the order of the two locks is the caller's whim (`flip`)."""
    return (j, i) if flip else (i, j)


@dataclass(frozen=True)
class LockPolicy(Policy):
    lock: Callable[[object, Cpu], None] | None = None
    unlock: Callable[[object, Cpu], None] | None = None
    pair_order: Callable = ascending


@dataclass(frozen=True)
class RwsemPolicy(Policy):
    down_read: Callable[[Rwsem, Cpu], None] | None = None
    up_read: Callable[[Rwsem, Cpu], None] | None = None
    down_write: Callable[[Rwsem, Cpu], None] | None = None
    up_write: Callable[[Rwsem, Cpu], None] | None = None


def _mark_acquired(cpu: Cpu, lock) -> None:
    cpu.held.append(lock.addr)
    s = cpu._tseq
    cpu._tseq = s + 1
    cpu.mem.store64(cpu._tbase + ((s & TRACE_MASK) << 3),
                    ((s & SEQ_MASK) << 44) | (EV["lock"] << 36) | lock.addr)


def busted_spin_lock(lock: Spinlock, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: test and set are two steps, a load then a store.

    Two CPUs that both see the lock free both take it (locktorture's
    lock_busted_ops).  Must produce an invariant (two holders, lost update)
    or lock-misuse (an unlock finds another owner) finding."""
    mem, off = lock.mem, lock.off
    attempt = 0
    while v := mem.load32(off):
        cpu.sched.spin(cpu, attempt, mem, off, v)
        attempt += 1
    cpu.window("busted_spin_lock:test-then-set")
    mem.store32(off, cpu.me)
    cpu.preempt_count += 1
    _mark_acquired(cpu, lock)


def busted_down_write(sem: Rwsem, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: the writer sets the writer bit but does not wait for readers.

    New readers are held off, the ones already inside carry on and see a
    half-done update.  Must produce an invariant finding."""
    cpu.might_sleep("down_write")
    mem, off = sem.mem, sem.off
    attempt = 0
    while True:
        c = mem.load32(off)
        if not c & RWSEM_LOCKED and mem.cmpxchg32(off, c, c | RWSEM_LOCKED) == c:
            break
        cpu.sched.spin(cpu, attempt, mem, off, c)
        attempt += 1
    mem.store32(off + 4, cpu.me)
    _mark_acquired(cpu, sem)


def _enter(w: World, i: int) -> None:
    prev = w.mem.xchg32(w.holder_off[i], w.cpu.me)
    if prev:
        w.cpu.report(
            "invariant",
            f"mutual exclusion broken: cpu {w.cpu.id} entered the critical section of "
            f"{w.locks[i].name()} while cpu {prev - 1} was inside",
            lock=w.locks[i].name(),
            other_cpu=prev - 1,
        )


def _leave(w: World, i: int) -> None:
    prev = w.mem.cmpxchg32(w.holder_off[i], w.cpu.me, 0)
    if prev != w.cpu.me:
        w.cpu.report(
            "invariant",
            f"mutual exclusion broken: cpu {prev - 1} is inside the critical section of "
            f"{w.locks[i].name()} that cpu {w.cpu.id} is leaving",
            lock=w.locks[i].name(),
        )
        w.mem.store32(w.holder_off[i], 0)


def _add(w: World, i: int) -> None:
    mem = w.mem
    v = mem.load64(w.counter_off[i])
    w.cpu.window("counter:load-then-store")
    mem.store64(w.counter_off[i], v + 1)
    w.mine[i] += 1
    mem.store64(w.mine_off[i], w.mine[i])


class _GuardedCounters(Scenario):
    """Shared state and checks of the lock scenarios."""

    lock_dtype: np.dtype = SPINLOCK
    handle: type = Spinlock

    def regions(self, ncpus: int) -> list[Region]:
        return [
            Region("guarded", guarded(self.lock_dtype), NLOCKS),
            Region("added", np.dtype(("<i8", (NLOCKS,))), ncpus),
        ]

    def attach(self, w: World) -> None:
        w.locks = [self.handle(w.machine, w.seg_index, w.offset("guarded", i, "lock")) for i in range(NLOCKS)]
        w.holder_off = [w.offset("guarded", i, "holder") for i in range(NLOCKS)]
        w.readers_off = [w.offset("guarded", i, "readers_in") for i in range(NLOCKS)]
        w.counter_off = [w.offset("guarded", i, "counter") for i in range(NLOCKS)]
        w.a_off = [w.offset("guarded", i, "a") for i in range(NLOCKS)]
        w.b_off = [w.offset("guarded", i, "b") for i in range(NLOCKS)]
        w.mine = [0] * NLOCKS
        if w.cpu.id < w.ncpus:
            base = w.offset("added", w.cpu.id)
            w.mine_off = [base + 8 * i for i in range(NLOCKS)]

    def sweep(self, w: World) -> None:
        g = w.view("guarded")
        added = w.view("added").sum(axis=0)
        for i in np.flatnonzero(g["counter"] != added):
            w.cpu.report(
                "invariant",
                f"lost update: counter {i} is {int(g['counter'][i])} but the CPUs added "
                f"{int(added[i])}",
                counter=int(i),
            )
        for i in np.flatnonzero(g["holder"] != 0):
            w.cpu.report("invariant", f"critical section {i} still has a holder at the end")


class ExclusiveLockScenario(_GuardedCounters):
    def operations(self, policy: LockPolicy) -> tuple[Operation, ...]:
        lock, unlock, order = policy.lock, policy.unlock, policy.pair_order

        def increment(w: World, i: int) -> None:
            L = w.locks[i]
            lock(L, w.cpu)
            _enter(w, i)
            _add(w, i)
            _leave(w, i)
            unlock(L, w.cpu)

        def increment_pair(w: World, i: int, j: int, flip: int) -> None:
            j += j >= i
            first, second = order(flip, i, j)
            lock(w.locks[first], w.cpu)
            w.cpu.window("pair:between-the-two-locks")
            lock(w.locks[second], w.cpu)
            for k in (first, second):
                _enter(w, k)
                _add(w, k)
                _leave(w, k)
            unlock(w.locks[second], w.cpu)
            unlock(w.locks[first], w.cpu)

        which = Arg("lock", NLOCKS)
        return (
            Operation("increment", 8, increment, (which,)),
            Operation("increment_pair", 2, increment_pair, (which, Arg("other", NLOCKS - 1), Arg("flip", 2))),
        )


class SpinlockScenario(ExclusiveLockScenario):
    name = "spinlock"
    doc = "spinlock_t mutual exclusion on plain counters (locktorture spin_lock)"
    lock_dtype = SPINLOCK
    handle = Spinlock


spin_lock = LockPolicy(
    "spin_lock",
    doc="shm's spinlock_t: cmpxchg acquire, owner recorded, preemption disabled",
    lock=Spinlock.lock,
    unlock=Spinlock.unlock,
)
SpinlockScenario.policies = (
    spin_lock,
    # DELIBERATELY BROKEN below.
    mutant(spin_lock, "busted", ("invariant", "lock-misuse"),
           f"{LOCKTORTURE}: lock_busted_ops (acquire that is not atomic)",
           "acquire as a load then a store", lock=busted_spin_lock),
    mutant(spin_lock, "abba", "deadlock",
           f"{LOCKTORTURE}: two locks taken in opposite orders (ABBA)",
           "pairs of locks taken in either order", pair_order=either_order),
)


class MutexScenario(ExclusiveLockScenario):
    name = "mutex"
    doc = "struct mutex mutual exclusion on plain counters (locktorture mutex_lock)"
    lock_dtype = MUTEX
    handle = Mutex


mutex_lock = LockPolicy(
    "mutex_lock",
    doc="shm's mutex: cmpxchg fast path, futex sleep when contended",
    lock=Mutex.lock,
    unlock=Mutex.unlock,
)
MutexScenario.policies = (
    mutex_lock,
    # DELIBERATELY BROKEN below.
    mutant(mutex_lock, "abba", "deadlock",
           f"{LOCKTORTURE}: two mutexes taken in opposite orders (ABBA)",
           "pairs of mutexes taken in either order", pair_order=either_order),
)


class RwsemScenario(_GuardedCounters):
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
                    "invariant",
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
            _enter(w, i)
            readers = mem.load32(w.readers_off[i])
            if readers:
                cpu.report("invariant", f"writer of {L.name()} inside with {readers} readers inside",
                           lock=L.name())
            mem.store64(w.a_off[i], mem.load64(w.a_off[i]) + 1)
            cpu.window("write:between-a-and-b")
            mem.store64(w.b_off[i], mem.load64(w.b_off[i]) + 1)
            _add(w, i)
            _leave(w, i)
            up_write(L, cpu)

        which = Arg("lock", NLOCKS)
        return (Operation("read", 6, read, (which,)), Operation("write", 3, write, (which,)))

    def sweep(self, w: World) -> None:
        super().sweep(w)
        g = w.view("guarded")
        for i in np.flatnonzero((g["a"] != g["b"]) | (g["a"] != g["counter"])):
            w.cpu.report("invariant", f"rwsem record {i} inconsistent at the end")


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
    mutant(rwsem_lock, "busted", "invariant",
           f"{LOCKTORTURE}: a writer that does not wait for the readers to drain",
           "down_write sets the writer bit without waiting for readers",
           down_write=busted_down_write),
)

for _s in (SpinlockScenario(), MutexScenario(), RwsemScenario()):
    register(_s)

__all__ = ["LockPolicy", "RwsemPolicy", "busted_down_write", "busted_spin_lock"]
