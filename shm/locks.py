"""Locks in shared memory, each recording its owner CPU.

A lock is a field of a structured dtype (so it sits inside the struct it
protects: a ptl in a page, an mmap_lock in an mm) and a small handle object
(memory, byte offset, machine-wide address).  The field names are unique to
each lock type, so the watchdog finds every lock of a layout by walking its
dtypes and can tell who holds what.  Owners are stored as cpu id + 1; 0 is
unlocked.

While a CPU waits it publishes what it waits on (`waiting_on`), which gives
the watchdog a wait-for graph: a cycle is a deadlock, found as it forms.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING

import numpy as np

from shm.checks import LOCK_BAD_UNLOCK, LOCK_RECURSIVE, SEQCOUNT_CONCURRENT_WRITERS, SEQCOUNT_END_WITHOUT_BEGIN
from shm.events import EV, SEQ_MASK, TRACE_MASK, address
from shm.layout import field_dtype
from shm.protocols import CpuLike as Cpu
from shm.protocols import MachineLike as Machine

if TYPE_CHECKING:
    from shm._atomic import Memory

SPINLOCK = np.dtype([("spin_owner", "<i4")], align=True)
MUTEX = np.dtype([("mutex_owner", "<i4"), ("mutex_waiters", "<i4")], align=True)
RWSEM = np.dtype(
    [
        ("rwsem_count", "<i4"),
        ("rwsem_owner", "<i4"),
        ("rwsem_readers", "<i8"),
        ("rwsem_waiters", "<i4"),
        ("rwsem_pad", "<i4"),
    ],
    align=True,
)
SEQCOUNT = np.dtype([("sequence", "<i4")], align=True)

LOCK_DTYPES = {SPINLOCK: "spinlock", MUTEX: "mutex", RWSEM: "rwsem"}

# What a waiting CPU publishes: (what << 40) | address.
WAIT_SPIN, WAIT_MUTEX, WAIT_READ, WAIT_WRITE, WAIT_VAR, WAIT_GP, WAIT_IPI, WAIT_PAGE = 1, 2, 3, 4, 5, 6, 7, 8
WAIT_NAMES = {
    WAIT_SPIN: "spin_lock",
    WAIT_MUTEX: "mutex_lock",
    WAIT_READ: "down_read",
    WAIT_WRITE: "down_write",
    WAIT_VAR: "wait_var_event",
    WAIT_GP: "grace period",
    WAIT_IPI: "IPI acknowledgement",
    WAIT_PAGE: "a free page",
}
WAIT_SHIFT = 40
ADDR_MASK = (1 << WAIT_SHIFT) - 1

RWSEM_LOCKED = 1 << 30
RWSEM_WAITING = 1 << 29
RWSEM_READERS = RWSEM_WAITING - 1

_EV_LOCK = EV["lock"]
_EV_UNLOCK = EV["unlock"]
_EV_RLOCK = EV["read-lock"]
_EV_RUNLOCK = EV["read-unlock"]
_EV_BLOCK = EV["block"]


class Handle:
    __slots__ = ("mem", "off", "addr", "machine", "ev_lock", "ev_unlock", "ev_rlock", "ev_runlock")

    def __init__(self, machine: Machine, seg: int, off: int):
        self.machine = machine
        self.mem: Memory = machine.mems[seg]
        self.off = off
        self.addr = address(seg, off)
        self.ev_lock = (_EV_LOCK << 36) | self.addr
        self.ev_unlock = (_EV_UNLOCK << 36) | self.addr
        self.ev_rlock = (_EV_RLOCK << 36) | self.addr
        self.ev_runlock = (_EV_RUNLOCK << 36) | self.addr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.machine.describe(self.addr)}>"

    def name(self) -> str:
        return self.machine.describe(self.addr)

    def _begin_wait(self, cpu: Cpu, what: int) -> None:
        cpu.hmem.store64(cpu.waiting_off, (what << WAIT_SHIFT) | self.addr)
        cpu.trace(_EV_BLOCK, self.addr)
        cpu.wait_since = perf_counter_ns()

    @staticmethod
    def _end_wait(cpu: Cpu) -> None:
        cpu.hmem.store64(cpu.waiting_off, 0)
        cpu.hmem.fetch_add64(cpu.wait_ns_off, perf_counter_ns() - cpu.wait_since)
        cpu.hmem.fetch_add64(cpu.lock_waits_off, 1)

    @staticmethod
    def _drop_held(cpu: Cpu, addr: int) -> None:
        held = cpu.held
        if held and held[-1] == addr:
            held.pop()
        elif addr in held:
            held.remove(addr)


class Spinlock(Handle):
    """spinlock_t: test-and-test-and-set on the owner word; disables preemption."""

    __slots__ = ()

    def lock(self, cpu: Cpu) -> None:
        if self.mem.cmpxchg32(self.off, 0, cpu.owner_id):
            self._lock_slow(cpu)
        cpu.preempt_count += 1
        d = cpu.rcu_depth  # Cpu.rcu_reader_enter, inlined: a spinlock is on every fault's path
        cpu.rcu_depth = d + 1
        if d == 0:
            h = cpu.hmem
            h.store64(cpu._rcu_reader_off, h.load64(cpu._gp_ctr_off))
        cpu.held.append(self.addr)
        s = cpu._tseq
        cpu._tseq = s + 1
        cpu.hmem.store64(cpu._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | self.ev_lock)

    def _lock_slow(self, cpu: Cpu) -> None:
        mem, off, owner = self.mem, self.off, cpu.owner_id
        if mem.load32(off) == owner:
            cpu.report(LOCK_RECURSIVE, f"recursive spin_lock of {self.name()} (AA deadlock)")
        self._begin_wait(cpu, WAIT_SPIN)
        spin = cpu.sched.spin
        attempt = 0
        while True:
            v = mem.load32(off)
            if v == 0:
                if (v := mem.cmpxchg32(off, 0, owner)) == 0:
                    break
                cpu.hmem.fetch_add64(cpu.lock_races_off, 1)
            spin(cpu, attempt, mem, off, v)
            attempt += 1
        self._end_wait(cpu)

    def trylock(self, cpu: Cpu) -> bool:
        if self.mem.cmpxchg32(self.off, 0, cpu.owner_id):
            return False
        cpu.preempt_count += 1
        cpu.rcu_reader_enter()
        cpu.held.append(self.addr)
        cpu.trace(_EV_LOCK, self.addr)
        return True

    def unlock(self, cpu: Cpu) -> None:
        s = cpu._tseq
        cpu._tseq = s + 1
        cpu.hmem.store64(cpu._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | self.ev_unlock)
        prev = self.mem.xchg32(self.off, 0)
        if prev != cpu.owner_id:
            _bad_unlock(cpu, "spin_unlock", self, prev)
        held = cpu.held
        if held and held[-1] == self.addr:
            held.pop()
        else:
            self._drop_held(cpu, self.addr)
        if cpu.preempt_count > 0:
            cpu.preempt_count -= 1
            d = cpu.rcu_depth - 1
            cpu.rcu_depth = d
            if d == 0:
                cpu.hmem.store64(cpu._rcu_reader_off, 0)

    def lock_irq(self, cpu: Cpu) -> None:
        cpu.local_irq_disable()
        self.lock(cpu)

    def unlock_irq(self, cpu: Cpu) -> None:
        self.unlock(cpu)
        cpu.local_irq_enable()

    def owner(self) -> int:
        """The owning CPU, or -1."""
        return self.mem.load32(self.off) - 1

    def is_locked(self) -> bool:
        return self.mem.load32(self.off) != 0


class Mutex(Handle):
    """struct mutex: sleeping on a shared futex; may only be taken where sleeping is allowed."""

    __slots__ = ()

    def lock(self, cpu: Cpu) -> None:
        cpu.might_sleep("mutex_lock")
        self._acquire(cpu)

    def _acquire(self, cpu: Cpu) -> None:
        if self.mem.cmpxchg32(self.off, 0, cpu.owner_id):
            self._lock_slow(cpu)
        cpu.held.append(self.addr)
        cpu.trace(_EV_LOCK, self.addr)

    def _lock_slow(self, cpu: Cpu) -> None:
        mem, off, owner = self.mem, self.off, cpu.owner_id
        if mem.load32(off) == owner:
            cpu.report(LOCK_RECURSIVE, f"recursive mutex_lock of {self.name()} (AA deadlock)")
        self._begin_wait(cpu, WAIT_MUTEX)
        mem.fetch_add32(off + 4, 1)
        block = cpu.sched.block
        while True:
            v = mem.cmpxchg32(off, 0, owner)
            if v == 0:
                break
            block(cpu, mem, off, v, None)
        mem.fetch_sub32(off + 4, 1)
        self._end_wait(cpu)

    def trylock(self, cpu: Cpu) -> bool:
        if self.mem.cmpxchg32(self.off, 0, cpu.owner_id):
            return False
        cpu.held.append(self.addr)
        cpu.trace(_EV_LOCK, self.addr)
        return True

    def unlock(self, cpu: Cpu) -> None:
        cpu.trace(_EV_UNLOCK, self.addr)
        prev = self.mem.xchg32(self.off, 0)
        if prev != cpu.owner_id:
            _bad_unlock(cpu, "mutex_unlock", self, prev)
        self._drop_held(cpu, self.addr)
        if self.mem.load32(self.off + 4):
            self.mem.futex_wake(self.off, 1)

    def owner(self) -> int:
        return self.mem.load32(self.off) - 1


class Seqcount(Handle):
    """seqcount_t: writers (serialised by their own lock) make it odd while they write."""

    __slots__ = ()

    def write_begin(self, cpu: Cpu) -> None:
        if self.mem.fetch_add32(self.off, 1) & 1:
            cpu.report(
                SEQCOUNT_CONCURRENT_WRITERS,
                f"write_seqcount_begin of {self.name()}: another writer is inside (writers not serialised)",
            )

    def write_end(self, cpu: Cpu) -> None:
        if not self.mem.fetch_add32(self.off, 1) & 1:
            cpu.report(SEQCOUNT_END_WITHOUT_BEGIN, f"write_seqcount_end of {self.name()} without begin")

    def read_begin(self, cpu: Cpu) -> int:
        mem, off = self.mem, self.off
        s = mem.load32(off)
        attempt = 0
        while s & 1:
            cpu.sched.spin(cpu, attempt, mem, off, s)
            attempt += 1
            s = mem.load32(off)
        return s

    def raw_read(self) -> int:
        return self.mem.load32(self.off)

    def read_retry(self, cpu: Cpu, start: int) -> bool:
        return self.mem.load32(self.off) != start


def _bad_unlock(cpu: Cpu, what: str, lock: Handle, prev: int) -> None:
    holder = "nobody" if prev == 0 else f"cpu {prev - 1}"
    cpu.report(
        LOCK_BAD_UNLOCK,
        f"{what} of {lock.name()} by cpu {cpu.id}, but it was held by {holder}",
        lock=lock.name(),
        holder=prev - 1,
    )


def wait_var_event(cpu: Cpu, addr: int, condition: Callable[[], bool]) -> None:
    """Sleep until condition() holds; wakers call wake_up_var(addr) after changing it."""
    cpu.might_sleep("wait_var_event")
    machine = cpu.machine
    bucket = machine.wake_bucket(addr)
    mem = machine.mem
    if condition():
        return
    cpu.hmem.store64(cpu.waiting_off, (WAIT_VAR << WAIT_SHIFT) | addr)
    cpu.trace(_EV_BLOCK, addr)
    while True:
        seq = mem.load32(bucket)
        if condition():
            break
        cpu.sched.block(cpu, mem, bucket, seq, None)
    cpu.hmem.store64(cpu.waiting_off, 0)


def wake_up_var(cpu: Cpu, addr: int) -> None:
    machine = cpu.machine
    bucket = machine.wake_bucket(addr)
    machine.mem.fetch_add32(bucket, 1)
    machine.mem.futex_wake(bucket, -1)
    cpu.trace(EV["wake"], addr)


def lock_sites(machine: Machine) -> list[tuple[str, int, int]]:
    """(kind, segment index, offset) of every lock in every segment of the machine."""
    out = []
    for si, seg in enumerate(machine.segments):
        lay = seg.layout
        for name, r in lay.regions.items():
            if r.dtype in LOCK_DTYPES:
                base = lay.offset(name) if r.count else 0
                kind = LOCK_DTYPES[r.dtype]
                out += [(kind, si, base + i * r.dtype.itemsize) for i in range(r.count)]
        for region, field in lay.fields(lambda dt: dt in LOCK_DTYPES):
            r = lay.regions[region]
            base = lay.offset(region, 0, field)
            dt = r.dtype
            for part in field.split("."):
                dt = field_dtype(dt, part)
            kind = LOCK_DTYPES[dt]
            for i in range(r.count):
                out.append((kind, si, base + i * r.dtype.itemsize))
    return out
