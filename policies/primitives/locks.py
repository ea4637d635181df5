"""Lock torture, as locktorture does it (kernel/locking/locktorture.c).

CPUs increment plain (non-atomic) counters guarded by a lock: a load, a
preemption window, a store.  Mutual exclusion is checked online (a holder
word set on entry and cleared on exit) and at the end (each counter equals
the sum of what the CPUs say they added).  Pairs of locks are taken in a
policy-chosen order, so a lock-order inversion shows up as a deadlock; a
pair may name one lock twice, which double_rq_lock() takes once.  An
increment may take its error path, which must release the lock once (the
lock and context checks of the machine are proven here, as
lib/locking-selftest.c proves lockdep's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies import register
from policies.scenario import Arg, Operation, Policy, Region, Scenario, World, mutant
from shm import MUTEX, SPINLOCK, Cpu, Mutex, Spinlock
from shm.checks import LOCK_BAD_UNLOCK, LOCK_DEADLOCK_CYCLE, LOCK_HELD_AT_RETURN, LOCK_RECURSIVE, define_check
from shm.events import EV, SEQ_MASK, TRACE_MASK

NLOCKS = 4
ERROR_PATH = 4
LOCKTORTURE = "kernel/locking/locktorture.c"

EXCLUSION = define_check(
    "locktorture.exclusion",
    "invariant",
    "two CPUs inside one critical section: a lock let a second holder in, or a writer in with readers",
)
LOST_UPDATE = define_check(
    "locktorture.lost-update",
    "invariant",
    "at the end, a counter a lock guards is not the sum of what the CPUs added (an update was lost)",
)


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


def double_lock(w: World, first: int, second: int) -> None:
    """double_rq_lock(): take both locks, but one lock that is named twice only once."""
    lock = w.policy.lock
    if first == second:
        w.count("same_lock")
        lock(w.locks[first], w.cpu)
        return
    lock(w.locks[first], w.cpu)
    w.cpu.window("pair:between-the-two-locks")
    lock(w.locks[second], w.cpu)


def double_lock_twice(w: World, first: int, second: int) -> None:
    """DELIBERATELY BROKEN: takes both locks even when they are the same lock.

    double_rq_lock() takes rq1 once when rq1 == rq2; without that test the
    CPU spins on the lock it holds.  Must trip lock.recursive."""
    lock = w.policy.lock
    lock(w.locks[first], w.cpu)
    w.cpu.window("pair:between-the-two-locks")
    lock(w.locks[second], w.cpu)


def unlock_on_error(w: World, i: int) -> None:
    w.policy.unlock(w.locks[i], w.cpu)


def keep_lock_on_error(w: World, i: int) -> None:
    """DELIBERATELY BROKEN: the error path returns without releasing the lock.

    Must trip lock.held-at-return (lockdep: "lock held when returning to
    user space")."""


def count_outside_the_lock_on_error(w: World, i: int) -> None:
    """DELIBERATELY BROKEN: the error path drops the lock, then updates the counter it guards.

    An update outside the lock races with a holder's load and store: one of
    them is lost, which the sweep finds (locktorture.lost-update); no holder
    ever overlaps another inside the section, so the online check is silent."""
    w.policy.unlock(w.locks[i], w.cpu)
    add_guarded(w, i)


def unlock_twice_on_error(w: World, i: int) -> None:
    """DELIBERATELY BROKEN: the error path releases the lock, and so does the common exit.

    Must trip lock.bad-unlock (the second unlock of a lock nobody holds)."""
    w.policy.unlock(w.locks[i], w.cpu)
    w.policy.unlock(w.locks[i], w.cpu)


@dataclass(frozen=True, kw_only=True)
class LockPolicy(Policy):
    lock: Callable[[Any, Cpu], None]
    unlock: Callable[[Any, Cpu], None]
    pair_order: Callable = ascending
    double_lock: Callable[[World, int, int], None] = double_lock
    error_exit: Callable[[World, int], None] = unlock_on_error


def mark_acquired(cpu: Cpu, lock) -> None:
    cpu.held.append(lock.addr)
    s = cpu._tseq
    cpu._tseq = s + 1
    cpu.hmem.store64(cpu._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | (EV["lock"] << 36) | lock.addr)


def busted_spin_lock(lock: Spinlock, cpu: Cpu) -> None:
    """DELIBERATELY BROKEN: test and set are two steps, a load then a store.

    Two CPUs that both see the lock free both take it (locktorture's
    lock_busted_ops).  Must trip locktorture.exclusion when the second
    holder enters while the first is inside, or lock.bad-unlock when the
    first has left already and its unlock finds the second owner's mark."""
    mem, off = lock.mem, lock.off
    attempt = 0
    while v := mem.load32(off):
        cpu.sched.spin(cpu, attempt, mem, off, v)
        attempt += 1
    cpu.window("busted_spin_lock:test-then-set")
    mem.store32(off, cpu.owner_id)
    cpu.preempt_count += 1
    cpu.rcu_reader_enter()
    mark_acquired(cpu, lock)


def enter_critical(w: World, i: int) -> None:
    prev = w.mem.xchg32(w.holder_off[i], w.cpu.owner_id)
    if prev:
        w.cpu.report(
            EXCLUSION,
            f"mutual exclusion broken: cpu {w.cpu.id} entered the critical section of "
            f"{w.locks[i].name()} while cpu {prev - 1} was inside",
            lock=w.locks[i].name(),
            other_cpu=prev - 1,
        )


def leave_critical(w: World, i: int) -> None:
    prev = w.mem.cmpxchg32(w.holder_off[i], w.cpu.owner_id, 0)
    if prev != w.cpu.owner_id:
        w.cpu.report(
            EXCLUSION,
            f"mutual exclusion broken: cpu {prev - 1} is inside the critical section of "
            f"{w.locks[i].name()} that cpu {w.cpu.id} is leaving",
            lock=w.locks[i].name(),
        )
        w.mem.store32(w.holder_off[i], 0)


def add_guarded(w: World, i: int) -> None:
    mem = w.mem
    v = mem.load64(w.counter_off[i])
    w.cpu.window("counter:load-then-store")
    mem.store64(w.counter_off[i], v + 1)
    w.mine[i] += 1
    mem.store64(w.mine_off[i], w.mine[i])


class GuardedCounters(Scenario):
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
                LOST_UPDATE,
                f"lost update: counter {i} is {int(g['counter'][i])} but the CPUs added {int(added[i])}",
                counter=int(i),
            )


class ExclusiveLockScenario(GuardedCounters):
    counters = ("same_lock", "error_exits")

    def operations(self, policy: LockPolicy) -> tuple[Operation, ...]:
        order, take_both, error_exit = policy.pair_order, policy.double_lock, policy.error_exit
        lock, unlock = policy.lock, policy.unlock

        def increment(w: World, i: int, error: int) -> None:
            L = w.locks[i]
            lock(L, w.cpu)
            if error == 0:
                w.count("error_exits")
                error_exit(w, i)
                return
            enter_critical(w, i)
            add_guarded(w, i)
            leave_critical(w, i)
            unlock(L, w.cpu)

        def increment_pair(w: World, i: int, j: int, flip: int) -> None:
            first, second = order(flip, i, j)
            take_both(w, first, second)
            for k in dict.fromkeys((first, second)):
                enter_critical(w, k)
                add_guarded(w, k)
                leave_critical(w, k)
            if second != first:
                unlock(w.locks[second], w.cpu)
            unlock(w.locks[first], w.cpu)

        which = Arg("lock", NLOCKS)
        return (
            Operation("increment", 8, increment, (which, Arg("error", ERROR_PATH))),
            Operation("increment_pair", 2, increment_pair, (which, Arg("other", NLOCKS), Arg("flip", 2))),
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
    mutant(
        spin_lock,
        "busted",
        (EXCLUSION, LOCK_BAD_UNLOCK),
        f"{LOCKTORTURE}: lock_busted_ops (acquire that is not atomic)",
        "acquire as a load then a store",
        "lock_waits",
        lock=busted_spin_lock,
    ),
    mutant(
        spin_lock,
        "abba",
        LOCK_DEADLOCK_CYCLE,
        f"{LOCKTORTURE}: two locks taken in opposite orders (ABBA)",
        "pairs of locks taken in either order",
        "window:pair:between-the-two-locks",
        pair_order=either_order,
    ),
    mutant(
        spin_lock,
        "double_lock_same",
        LOCK_RECURSIVE,
        "kernel/sched/core.c double_rq_lock(): 'if (rq1 == rq2) raw_spin_rq_lock(rq1)'",
        "a pair naming one lock twice takes it twice",
        "same_lock",
        double_lock=double_lock_twice,
    ),
    mutant(
        spin_lock,
        "error_keeps_lock",
        LOCK_HELD_AT_RETURN,
        "lib/locking-selftest.c; lockdep: lock held when returning to user space",
        "the error path returns with the lock held",
        "error_exits",
        error_exit=keep_lock_on_error,
    ),
    mutant(
        spin_lock,
        "count_after_unlock",
        LOST_UPDATE,
        f"{LOCKTORTURE}: lock_torture_writer's counter is updated only under the lock",
        "the error path updates the guarded counter after dropping the lock",
        "error_exits",
        error_exit=count_outside_the_lock_on_error,
    ),
    mutant(
        spin_lock,
        "error_unlocks_twice",
        LOCK_BAD_UNLOCK,
        "lib/locking-selftest.c: double unlock",
        "the error path unlocks, then the common exit unlocks again",
        "error_exits",
        error_exit=unlock_twice_on_error,
    ),
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
    mutant(
        mutex_lock,
        "error_unlocks_twice",
        LOCK_BAD_UNLOCK,
        "kernel/locking/mutex.c: DEBUG_LOCKS_WARN_ON(__owner_task(owner) != current)",
        "the error path unlocks, then the common exit unlocks again",
        "error_exits",
        error_exit=unlock_twice_on_error,
    ),
    mutant(
        mutex_lock,
        "abba",
        LOCK_DEADLOCK_CYCLE,
        f"{LOCKTORTURE}: two mutexes taken in opposite orders (ABBA)",
        "pairs of mutexes taken in either order",
        "window:pair:between-the-two-locks",
        pair_order=either_order,
    ),
)


for _s in (SpinlockScenario(), MutexScenario()):
    register(_s)

__all__ = ["LockPolicy", "busted_spin_lock"]
