"""Checks: every place that reports a finding has a stable identity.

A check is an id (`pool.uaf`, `lock.deadlock-cycle`, `mm.pte-after-zap`), the
coarse kind it reports under (use-after-free, refcount, deadlock...) and one
line saying what it means.  The id travels in every finding and in the JSON
report, so a verdict names exactly which check fired; a mutant names the check
it must trip; `mmtorture list --checks` lists them with the mutants that prove
them.  In shared memory a check is its code, a hash of the id, the same in
every process (like an rcu callback's name).

The machine's own checks are defined here: the page pool and slab caches (the
model's KASAN and kmemleak), refcount_t and percpu_ref (lib/refcount.c,
lib/percpu-refcount.c), the lock and context checks (lockdep, might_sleep),
and the detectors every run has (a crashed CPU, the hung-task watchdog, the
controlled scheduler's deadlock and livelock).  Scenarios and the mm model
define theirs beside the code that reports them.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from shm.events import KINDS

_ID = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9][a-z0-9-]*)+$")


@dataclass(frozen=True)
class Check:
    id: str
    kind: str
    meaning: str
    code: int

    def __str__(self) -> str:
        return self.id


_CHECKS: dict[str, Check] = {}
_BY_CODE: dict[int, Check] = {}


def define_check(check_id: str, kind: str, meaning: str) -> Check:
    """Register a check once, at import; defining the same check again returns it."""
    if not _ID.match(check_id):
        raise ValueError(f"check id {check_id!r} is not of the form area.name (lower case, dots, dashes)")
    if kind not in KINDS:
        raise ValueError(f"check {check_id}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    known = _CHECKS.get(check_id)
    if known is not None:
        if (known.kind, known.meaning) != (kind, meaning):
            raise ValueError(f"check {check_id} is already defined with another kind or meaning")
        return known
    code = zlib.crc32(check_id.encode()) & 0x7FFFFFFF or 1
    if code in _BY_CODE:
        raise ValueError(f"check {check_id!r} collides with {_BY_CODE[code].id!r}")
    c = Check(check_id, kind, meaning, code)
    _CHECKS[check_id] = _BY_CODE[code] = c
    return c


def get_check(check_id: str) -> Check:
    try:
        return _CHECKS[check_id]
    except KeyError:
        raise LookupError(f"unknown check {check_id!r} (see `mmtorture list --checks`)") from None


def check_by_code(code: int) -> Check | None:
    return _BY_CODE.get(int(code))


def all_checks() -> list[Check]:
    return sorted(_CHECKS.values(), key=lambda c: c.id)


# -- the page pool and the slab caches: KASAN and kmemleak of the model --------------
POOL_UAF = define_check(
    "pool.uaf",
    "use-after-free",
    "a checked access to a page that is free, or was freed and reused since the reference was taken",
)
POOL_DOUBLE_FREE = define_check(
    "pool.double-free", "double-free", "a page freed twice, or freed through a stale reference"
)
POOL_LEAK = define_check(
    "pool.leak",
    "leak",
    "a page allocated that nothing refers to at a quiescent point, or still allocated after teardown",
)
SLAB_UAF = define_check(
    "slab.uaf",
    "use-after-free",
    "a checked access to a kmem_cache object that is free or was reused since the reference was taken",
)
SLAB_DOUBLE_FREE = define_check(
    "slab.double-free", "double-free", "kmem_cache_free of an object that is free, or through a stale reference"
)
SLAB_LEAK = define_check(
    "slab.leak",
    "leak",
    "kmem_cache objects allocated that nothing refers to at a quiescent point, or never freed after teardown",
)

# -- refcount_t and percpu_ref --------------------------------------------------------
REFCOUNT_INC_ON_ZERO = define_check(
    "refcount.inc-on-zero",
    "refcount",
    "refcount_t incremented from 0: the object may already be freed (lib/refcount.c: addition on 0)",
)
REFCOUNT_UNDERFLOW = define_check(
    "refcount.underflow",
    "refcount",
    "refcount_t decremented past 0: one put too many (lib/refcount.c: underflow; use-after-free)",
)
PERCPU_REF_UNDERFLOW = define_check(
    "percpu_ref.underflow", "refcount", "a percpu_ref's count goes below zero in atomic mode"
)
PERCPU_REF_GET_AFTER_RELEASE = define_check(
    "percpu_ref.get-after-release", "refcount", "a reference taken on a percpu_ref that was already released"
)
PERCPU_REF_DOUBLE_KILL = define_check("percpu_ref.double-kill", "refcount", "percpu_ref_kill() called more than once")
PERCPU_REF_REINIT_LIVE = define_check(
    "percpu_ref.reinit-unreleased", "refcount", "percpu_ref_reinit() of a ref that was not released yet"
)

# -- locks and context: lockdep and might_sleep ---------------------------------------
LOCK_BAD_UNLOCK = define_check(
    "lock.bad-unlock",
    "lock-misuse",
    "a lock released by a CPU that does not hold it (spin_unlock, mutex_unlock, up_read, up_write)",
)
LOCK_HELD_AT_RETURN = define_check(
    "lock.held-at-return",
    "lock-misuse",
    "an operation returns to user space with a lock held, preemption or interrupts off, or inside RCU",
)
LOCK_RECURSIVE = define_check("lock.recursive", "deadlock", "a CPU takes a lock it already holds (AA deadlock)")
LOCK_DEADLOCK_CYCLE = define_check(
    "lock.deadlock-cycle", "deadlock", "CPUs wait for each other in a cycle (ABBA), seen in the wait-for graph"
)
PREEMPT_IMBALANCE = define_check(
    "context.preempt-imbalance", "lock-misuse", "preempt_enable() without preempt_disable()"
)
IRQ_IMBALANCE = define_check(
    "context.irq-imbalance", "lock-misuse", "local_irq_enable() with interrupts already enabled"
)
RCU_UNLOCK_IMBALANCE = define_check(
    "rcu.unlock-imbalance", "lock-misuse", "rcu_read_unlock() outside a read-side critical section"
)
SRCU_BAD_INDEX = define_check(
    "srcu.bad-index", "lock-misuse", "srcu_read_unlock() given an index srcu_read_lock() cannot have returned"
)
SEQCOUNT_CONCURRENT_WRITERS = define_check(
    "seqcount.concurrent-writers",
    "lock-misuse",
    "write_seqcount_begin() while another writer is inside: the writers are not serialised",
)
SEQCOUNT_END_WITHOUT_BEGIN = define_check(
    "seqcount.end-without-begin", "lock-misuse", "write_seqcount_end() with no write section open"
)
SLEEP_IN_ATOMIC = define_check(
    "context.sleep-in-atomic",
    "invalid-context",
    "a sleeping call (mutex, rwsem, GFP_KERNEL, synchronize_rcu) with a spinlock held, preemption or "
    "interrupts off, or inside RCU (might_sleep)",
)
IPI_IRQS_OFF = define_check(
    "context.ipi-irqs-off",
    "invalid-context",
    "smp_call_function_many() with interrupts off: two such CPUs wait for each other's acknowledgement",
)

# -- the detectors every run has --------------------------------------------------------
CPU_CRASH = define_check("cpu.crash", "cpu-crash", "a CPU raised an exception in policy code, or its process died")
WATCHDOG_STALL = define_check(
    "watchdog.stall",
    "hang",
    "a CPU made no progress for --stall-timeout and is in no wait-for cycle (a lost wakeup, a spin "
    "nobody ends, a wait that never finishes)",
)
SCHED_ALL_BLOCKED = define_check(
    "sched.all-blocked",
    "hang",
    "controlled scheduler: every CPU is blocked and no lock cycle explains it (a lost wakeup, memory nobody frees)",
)
SCHED_LIVELOCK = define_check(
    "sched.livelock", "hang", "controlled scheduler: for 200,000 decisions only CPUs spinning on a condition could run"
)
