"""struct rw_semaphore in shared memory: many readers or one writer, a waiting writer holding
off new readers (the word's layout, RWSEM and RWSEM_*, is locks.py's with the other locks')."""

from __future__ import annotations

from shm.checks import LOCK_BAD_UNLOCK, LOCK_RECURSIVE
from shm.events import EV, SEQ_MASK, TRACE_MASK
from shm.locks import (
    RWSEM_LOCKED,
    RWSEM_READERS,
    RWSEM_WAITING,
    WAIT_READ,
    WAIT_WRITE,
    Handle,
    _bad_unlock,
)
from shm.protocols import CpuLike as Cpu

_EV_LOCK = EV["lock"]
_EV_UNLOCK = EV["unlock"]
_EV_RLOCK = EV["read-lock"]


class Rwsem(Handle):
    """struct rw_semaphore: many readers or one writer; a waiting writer holds off new readers."""

    __slots__ = ()

    def down_read(self, cpu: Cpu) -> None:
        if cpu.preempt_count or cpu.rcu_nesting or cpu.irqs_disabled:  # might_sleep, inlined: on every fault
            cpu.might_sleep("down_read")
        mem, off = self.mem, self.off
        c = mem.load32(off)
        if c & (RWSEM_LOCKED | RWSEM_WAITING) or mem.cmpxchg32(off, c, c + 1) != c:
            self._read_slow(cpu)
        mem.fetch_or64(off + 8, 1 << cpu.id)
        cpu.held.append(self.addr)
        s = cpu._tseq
        cpu._tseq = s + 1
        cpu.hmem.store64(cpu._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | self.ev_rlock)

    def _read_slow(self, cpu: Cpu) -> None:
        mem, off = self.mem, self.off
        self._begin_wait(cpu, WAIT_READ)
        mem.fetch_add32(off + 16, 1)
        block = cpu.sched.block
        while True:
            c = mem.load32(off)
            if not c & (RWSEM_LOCKED | RWSEM_WAITING):
                if mem.cmpxchg32(off, c, c + 1) == c:
                    break
                continue
            block(cpu, mem, off, c, None)
        mem.fetch_sub32(off + 16, 1)
        self._end_wait(cpu)

    def down_read_trylock(self, cpu: Cpu) -> bool:
        mem, off = self.mem, self.off
        c = mem.load32(off)
        if c & (RWSEM_LOCKED | RWSEM_WAITING) or mem.cmpxchg32(off, c, c + 1) != c:
            return False
        mem.fetch_or64(off + 8, 1 << cpu.id)
        cpu.held.append(self.addr)
        cpu.trace(_EV_RLOCK, self.addr)
        return True

    def up_read(self, cpu: Cpu) -> None:
        mem, off = self.mem, self.off
        s = cpu._tseq
        cpu._tseq = s + 1
        cpu.hmem.store64(cpu._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | self.ev_runlock)
        if not mem.fetch_and64(off + 8, ~(1 << cpu.id)) & (1 << cpu.id):
            cpu.report(
                LOCK_BAD_UNLOCK,
                f"up_read of {self.name()} by cpu {cpu.id}, which does not hold it for read",
                lock=self.name(),
            )
            return
        old = mem.fetch_sub32(off, 1)
        self._drop_held(cpu, self.addr)
        if not (old - 1) & RWSEM_READERS and mem.load32(off + 16):
            mem.futex_wake(off, -1)

    def down_write(self, cpu: Cpu) -> None:
        cpu.might_sleep("down_write")
        mem, off = self.mem, self.off
        c = mem.load32(off)
        if c & ~RWSEM_WAITING or mem.cmpxchg32(off, c, RWSEM_LOCKED) != c:
            self._write_slow(cpu)
        mem.store32(off + 4, cpu.owner_id)
        cpu.held.append(self.addr)
        cpu.trace(_EV_LOCK, self.addr)

    def _write_slow(self, cpu: Cpu) -> None:
        mem, off = self.mem, self.off
        if mem.load32(off + 4) == cpu.owner_id:
            cpu.report(LOCK_RECURSIVE, f"recursive down_write of {self.name()} (AA deadlock)")
        self._begin_wait(cpu, WAIT_WRITE)
        mem.fetch_add32(off + 16, 1)
        block = cpu.sched.block
        while True:
            c = mem.load32(off)
            if not c & ~RWSEM_WAITING:
                if mem.cmpxchg32(off, c, RWSEM_LOCKED) == c:
                    break
                continue
            if not c & RWSEM_WAITING:
                mem.fetch_or32(off, RWSEM_WAITING)
                continue
            block(cpu, mem, off, c, None)
        mem.fetch_sub32(off + 16, 1)
        self._end_wait(cpu)

    def down_write_trylock(self, cpu: Cpu) -> bool:
        mem, off = self.mem, self.off
        c = mem.load32(off)
        if c & ~RWSEM_WAITING or mem.cmpxchg32(off, c, RWSEM_LOCKED) != c:
            return False
        mem.store32(off + 4, cpu.owner_id)
        cpu.held.append(self.addr)
        cpu.trace(_EV_LOCK, self.addr)
        return True

    def up_write(self, cpu: Cpu) -> None:
        mem, off = self.mem, self.off
        cpu.trace(_EV_UNLOCK, self.addr)
        prev = mem.xchg32(off + 4, 0)
        if prev != cpu.owner_id:
            mem.cmpxchg32(off + 4, 0, prev)
            _bad_unlock(cpu, "up_write", self, prev)
            return
        mem.fetch_and32(off, ~RWSEM_LOCKED)
        self._drop_held(cpu, self.addr)
        if mem.load32(off + 16):
            mem.futex_wake(off, -1)

    def downgrade_write(self, cpu: Cpu) -> None:
        """Writer becomes a reader without letting another writer in between."""
        mem, off = self.mem, self.off
        if mem.xchg32(off + 4, 0) != cpu.owner_id:
            _bad_unlock(cpu, "downgrade_write", self, -1)
        mem.fetch_add32(off, 1 - RWSEM_LOCKED)
        mem.fetch_or64(off + 8, 1 << cpu.id)
        cpu.trace(_EV_RLOCK, self.addr)
        if mem.load32(off + 16):
            mem.futex_wake(off, -1)

    def write_owner(self) -> int:
        return self.mem.load32(self.off + 4) - 1

    def readers(self) -> list[int]:
        mask = self.mem.load64(self.off + 8)
        return [i for i in range(64) if mask >> i & 1]

    def is_write_locked(self) -> bool:
        return bool(self.mem.load32(self.off) & RWSEM_LOCKED)
