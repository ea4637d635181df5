"""rcutorture's pipe, for every RCU flavour (kernel/rcu/rcutorture.c).

Writers publish a new object and retire the old one: its pipe age becomes 1
when it is unpublished and 2 once a grace period has elapsed, just before it
is freed.  Readers dereference the current object inside a read-side
critical section and read its age twice around a preemption window.  A
reader that sees age 2 held the object across a whole grace period, so the
grace period did not wait for it: the flavour is broken.  The histogram of
ages is the stat line's "Pipe:", as in rcutorture; all but the first two
buckets must stay zero.

The scenario is written once against the flavour's operations; `rcu` and
`srcu` are two instances of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from policies import register
from policies.scenario import Needs, Operation, Policy, Region, Scenario, World, mutant
from shm import GFP_KERNEL, Cpu, alloc_site, rcu_callback
from shm.checks import (
    RCU_UNLOCK_IMBALANCE,
    SCHED_LIVELOCK,
    SRCU_BAD_INDEX,
    WATCHDOG_STALL,
    define_check,
)
from shm.rcu import GP_PHASE

PIPE_LEN = 4
OBJ_SITE = alloc_site("pipe: rcu_torture object")
MAGIC = 0x7070E

PIPE_AGE = define_check(
    "rcu.pipe-age",
    "use-after-free",
    "rcutorture's pipe: a reader saw an object aged by a whole grace period, so the grace period did not "
    "wait for the reader",
)


@dataclass(frozen=True, kw_only=True)
class FlavorPolicy(Policy):
    read_lock: Callable[[World], Any]
    read_unlock: Callable[[World, Any], None]
    synchronize: Callable[[World], None]
    call: Callable[[World, Callable, int], None] | None = None
    barrier: Callable[[World], None] | None = None


FREED = 1 << 20


def pipe_age(pool, ref: int) -> int:
    """The object's pipe age, as rcutorture reads it (a plain load); FREED once the object's
    page was freed or reused, which only a grace period that did not wait can explain."""
    age = pool.mem.load64(pool.data_off(ref & 0xFFFFFF, 0))
    if not pool.alive(ref):
        return FREED
    return age


@rcu_callback("pipe: age and free")
def age_and_free(cpu: Cpu, ref: int) -> None:
    pool = cpu.machine.pool
    pool.write(cpu, ref, 0, 2, "pipe: ageing a retired object")
    pool.free_page(cpu, ref, OBJ_SITE)


class PipeScenario(Scenario):
    needs = Needs(pool_pages=256)
    counters = tuple(f"pipe{i}" for i in range(PIPE_LEN)) + ("retired",)

    def __init__(self, name: str, doc: str, policies: tuple[FlavorPolicy, ...]):
        self.name = name
        self.doc = doc
        self.policies = policies

    def regions(self, ncpus: int) -> list[Region]:
        return [Region("pipe", np.dtype([("current", "<i8"), ("pad", "<i8", (7,))]))]

    def attach(self, w: World) -> None:
        w.current_off = w.offset("pipe", 0, "current")

    def _new(self, w: World) -> int | None:
        ref = w.pool.alloc_page(w.cpu, GFP_KERNEL, OBJ_SITE)
        if ref is not None:
            w.pool.write(w.cpu, ref, 0, 0)
            w.pool.write(w.cpu, ref, 1, MAGIC)
        return ref

    def setup(self, w: World) -> None:
        w.mem.store64(w.current_off, self._new(w))

    def operations(self, policy: FlavorPolicy) -> tuple[Operation, ...]:
        read_lock, read_unlock = policy.read_lock, policy.read_unlock
        synchronize, call, barrier = policy.synchronize, policy.call, policy.barrier

        def read(w: World) -> None:
            cpu, pool = w.cpu, w.pool
            token = read_lock(w)
            ref = w.mem.load64(w.current_off)
            age = pipe_age(pool, ref)
            cpu.window("reader:inside-the-critical-section")
            age = max(age, pipe_age(pool, ref))
            read_unlock(w, token)
            if 0 <= age < PIPE_LEN:
                w.count(f"pipe{age}")
            if age >= 2:
                seen = f"age {age}" if age < FREED else "it freed"
                cpu.report(
                    PIPE_AGE,
                    f"rcu_torture pipe: reader saw {seen}: a grace period ended inside its"
                    f" {w.scenario.name} read-side critical section",
                    **pool.describe(ref & 0xFFFFFF, expected_gen=ref >> 24),
                )

        def retire(w: World) -> int | None:
            new = self._new(w)
            if new is None:
                return None
            old = w.mem.xchg64(w.current_off, new)
            w.pool.write(w.cpu, old, 0, 1, "pipe: retiring")
            w.count("retired")
            return old

        def replace_sync(w: World) -> None:
            old = retire(w)
            if old is None:
                return
            synchronize(w)
            w.pool.write(w.cpu, old, 0, 2, "pipe: ageing a retired object")
            w.cpu.window("writer:aged-before-free")
            w.pool.free_page(w.cpu, old, OBJ_SITE)

        def replace_async(w: World) -> None:
            old = retire(w)
            if old is not None and call is not None:
                call(w, age_and_free, old)

        ops = [Operation("read", 16, read), Operation("replace_sync", 2, replace_sync)]
        if call is not None:
            ops.append(Operation("replace_async", 2, replace_async))
        if barrier is not None:
            ops.append(Operation("barrier", 1, lambda w: barrier(w)))
        return tuple(ops)

    def teardown(self, w: World) -> None:
        ref = w.mem.xchg64(w.current_off, 0)
        if ref:
            w.pool.free_page(w.cpu, ref, OBJ_SITE)

    def stat_text(self, counters: dict[str, int]) -> str:
        return "Pipe: " + " ".join(str(counters.get(f"pipe{i}", 0)) for i in range(PIPE_LEN))


# -- RCU -------------------------------------------------------------------


def rcu_read_lock(w: World) -> None:
    w.rcu.read_lock(w.cpu)


def rcu_read_unlock(w: World, token: Any) -> None:
    w.rcu.read_unlock(w.cpu)


def synchronize_rcu(w: World) -> None:
    w.rcu.synchronize(w.cpu)


def call_rcu(w: World, fn: Callable, arg: int) -> None:
    w.rcu.call(w.cpu, fn, arg)


def rcu_barrier(w: World) -> None:
    w.rcu.barrier(w.cpu)


def rcu_read_unlock_twice(w: World, token: Any) -> None:
    """DELIBERATELY BROKEN: an error path leaves the read-side section, then the common exit again.

    Must trip rcu.unlock-imbalance."""
    w.rcu.read_unlock(w.cpu)
    w.rcu.read_unlock(w.cpu)


def synchronize_rcu_no_wait(w: World) -> None:
    """DELIBERATELY BROKEN: flips the phase and ends the grace period without waiting.

    rcutorture's rcu_busted_ops: the writer frees what readers still hold.
    The reader sees the object aged by the grace period, or freed
    (rcu.pipe-age)."""
    w.cpu.might_sleep("synchronize_rcu")
    w.rcu.mem.fetch_xor64(w.rcu.gp_ctr_off, GP_PHASE)
    w.rcu.mem.fetch_add64(w.rcu.gp_seq_off, 1)


rcu = FlavorPolicy(
    "rcu",
    doc="liburcu memb-style RCU: two phase flips per grace period, call_rcu via the kthread",
    read_lock=rcu_read_lock,
    read_unlock=rcu_read_unlock,
    synchronize=synchronize_rcu,
    call=call_rcu,
    barrier=rcu_barrier,
)
register(
    PipeScenario(
        "rcu",
        "rcutorture's pipe on RCU: no reader may see an object age past one grace period",
        (
            rcu,
            # DELIBERATELY BROKEN below.
            mutant(
                rcu,
                "no_wait_gp",
                PIPE_AGE,
                "kernel/rcu/rcutorture.c: rcu_busted_ops (a grace period that does not wait)",
                "synchronize_rcu that does not wait for readers",
                "pipe1",
                synchronize=synchronize_rcu_no_wait,
            ),
            mutant(
                rcu,
                "unlock_twice",
                RCU_UNLOCK_IMBALANCE,
                "Documentation/RCU/checklist.rst: every rcu_read_lock() has exactly one rcu_read_unlock()",
                "an error path calls rcu_read_unlock() twice",
                "op:read",
                read_unlock=rcu_read_unlock_twice,
            ),
        ),
    )
)


# -- SRCU ------------------------------------------------------------------


def srcu_read_lock(w: World) -> int:
    return w.srcu[0].read_lock(w.cpu)


def srcu_read_unlock(w: World, idx: int) -> None:
    w.srcu[0].read_unlock(w.cpu, idx)


def synchronize_srcu(w: World) -> None:
    w.srcu[0].synchronize(w.cpu)


def srcu_read_unlock_without_index(w: World, idx: int) -> None:
    """DELIBERATELY BROKEN: the unlock is not given the index srcu_read_lock() returned.

    Must trip srcu.bad-index."""
    w.srcu[0].read_unlock(w.cpu, None)


def srcu_read_unlock_other_index(w: World, idx: int) -> None:
    """DELIBERATELY BROKEN: the unlock counts on the other index than the lock did.

    Neither index ever drains, so synchronize_srcu() waits forever: under
    the controlled scheduler only the spinning updater can run in the end
    (sched.livelock); free-running, the watchdog sees it make no progress
    (watchdog.stall)."""
    w.srcu[0].read_unlock(w.cpu, 1 - idx)


def srcu_read_lock_uncounted(w: World) -> int:
    """DELIBERATELY BROKEN: returns the index but does not count the reader on it.

    synchronize_srcu() then sees no reader to wait for: the reader sees the
    object aged or freed (rcu.pipe-age)."""
    return w.srcu[0].mem.load64(w.srcu[0].completed_off) & 1


def srcu_read_unlock_uncounted(w: World, idx: int) -> None:
    """The unlock paired with the uncounted lock (counting only here would underflow)."""


srcu = FlavorPolicy(
    "srcu",
    doc="classic two-index SRCU: readers may sleep; synchronize_srcu waits per index",
    read_lock=srcu_read_lock,
    read_unlock=srcu_read_unlock,
    synchronize=synchronize_srcu,
)
register(
    PipeScenario(
        "srcu",
        "rcutorture's pipe on SRCU (srcu_read_lock returns the index to unlock)",
        (
            srcu,
            # DELIBERATELY BROKEN below.
            mutant(
                srcu,
                "uncounted_read_lock",
                PIPE_AGE,
                "kernel/rcu/srcutree.c: __srcu_read_lock must count the reader on its index",
                "srcu_read_lock that does not count",
                "pipe1",
                read_lock=srcu_read_lock_uncounted,
                read_unlock=srcu_read_unlock_uncounted,
            ),
            mutant(
                srcu,
                "unlock_without_index",
                SRCU_BAD_INDEX,
                "include/linux/srcu.h: srcu_read_unlock(ssp, idx) takes what srcu_read_lock(ssp) returned",
                "srcu_read_unlock without the index",
                "op:read",
                read_unlock=srcu_read_unlock_without_index,
            ),
            mutant(
                srcu,
                "unlock_other_index",
                (SCHED_LIVELOCK, WATCHDOG_STALL),
                "include/linux/srcu.h: srcu_read_unlock(ssp, idx) takes what srcu_read_lock(ssp) returned",
                "srcu_read_unlock on the other index",
                "pipe1",
                read_unlock=srcu_read_unlock_other_index,
            ),
        ),
    )
)
