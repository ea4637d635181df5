"""SRCU across processes: the kernel's classic two-index scheme.

srcu_read_lock() returns the index it counted on; synchronize_srcu() waits
for readers of the inactive index, flips, then waits for the old index to
drain (srcu_readers_active_idx_check: unlocks summed before locks).
call_srcu() queues on the domain's own per-CPU queues, which the RCU
grace-period kthread (rcu.py) works through without ever waiting for an SRCU
reader: a flip once the other index is drained, and what is two flips old
is invoked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shm.checks import SRCU_BAD_INDEX
from shm.layout import Region
from shm.locks import MUTEX, WAIT_GP, WAIT_SHIFT, Mutex
from shm.protocols import CpuLike as Cpu
from shm.protocols import MachineLike as Machine
from shm.rcu import _EV_CB, _EV_GP_BEGIN, _EV_GP_END, CB_ENTRY, CBQ, CBQ_LEN, COOKIE_MASK, EV, invoke_callback

SRCU_STATE = np.dtype([("completed", "<i8"), ("gp_seq", "<i8"), ("mutex", MUTEX)])
SRCU_CPU = np.dtype([("lock", "<i8", (2,)), ("unlock", "<i8", (2,)), ("pad", "<i8", (4,))])

_EV_SRCU_LOCK = EV["srcu-lock"]
_EV_SRCU_UNLOCK = EV["srcu-unlock"]


class Srcu:
    """An SRCU domain: sleepable readers counted per CPU on one of two indices."""

    @staticmethod
    def regions(nslots: int, domains: int) -> list[Region]:
        return [
            Region("srcu", SRCU_STATE, domains),
            Region("srcu_cpu", SRCU_CPU, nslots * domains),
            Region("srcu_cbq", CBQ, nslots * domains),
        ]

    def __init__(self, machine: Machine, domain: int):
        self.machine = machine
        self.mem = machine.mem
        self.name = f"srcu{domain}"
        self.domain = domain
        lay = machine.seg.layout
        n = machine.nslots
        self.completed_off = lay.offset("srcu", domain, "completed")
        self.gp_seq_off = lay.offset("srcu", domain, "gp_seq")
        self.mutex = Mutex(machine, 0, lay.offset("srcu", domain, "mutex"))
        self.lock_off = [lay.offset("srcu_cpu", domain * n + i, "lock") for i in range(n)]
        self.unlock_off = [lay.offset("srcu_cpu", domain * n + i, "unlock") for i in range(n)]
        self.head_off = [lay.offset("srcu_cbq", domain * n + i, "head") for i in range(n)]
        self.tail_off = [lay.offset("srcu_cbq", domain * n + i, "tail") for i in range(n)]
        self.entries_off = [lay.offset("srcu_cbq", domain * n + i, "entries") for i in range(n)]

    def close(self) -> None:
        pass

    def read_lock(self, cpu: Cpu) -> int:
        """srcu_read_lock(): the index counted on, to hand back to srcu_read_unlock()."""
        idx = self.mem.load64(self.completed_off) & 1
        self.mem.fetch_add64(self.lock_off[cpu.id] + 8 * idx, 1)
        cpu.trace(_EV_SRCU_LOCK, idx)
        return idx

    def read_unlock(self, cpu: Cpu, token: Any = None) -> None:
        if token not in (0, 1):
            cpu.report(SRCU_BAD_INDEX, f"srcu_read_unlock() with index {token!r}: not what srcu_read_lock() returned")
            return
        self.mem.fetch_add64(self.unlock_off[cpu.id] + 8 * token, 1)
        cpu.trace(_EV_SRCU_UNLOCK, token)

    def readers_active_idx(self, idx: int) -> bool:
        mem = self.mem
        unlocks = sum(mem.load64(o + 8 * idx) for o in self.unlock_off)
        locks = sum(mem.load64(o + 8 * idx) for o in self.lock_off)
        return locks != unlocks

    def _wait_idx(self, cpu: Cpu, idx: int) -> None:
        attempt = 0
        while self.readers_active_idx(idx):
            if attempt == 0:
                cpu.hmem.store64(cpu.waiting_off, (WAIT_GP << WAIT_SHIFT) | 0xFFFF)
            cpu.sched.spin(cpu, attempt)
            attempt += 1
        if attempt:
            cpu.hmem.store64(cpu.waiting_off, 0)

    def call(self, cpu: Cpu, callback: Callable | int, arg: int) -> None:
        """call_srcu(): callback(cpu, arg) runs once every reader that began before the call has
        finished: it is queued with the index count `completed` at the call, c, and runs once it
        reached c + 2, two flips later, each made only when the index it retires was drained
        (advance), so a reader counted on either index before the call has left."""
        i = cpu.id
        cookie = self.mem.load64(self.completed_off) & COOKIE_MASK
        self.machine.rcu.enqueue(cpu, self.head_off[i], self.tail_off[i], self.entries_off[i], callback, cookie, arg)

    def advance(self, cpu: Cpu) -> bool:
        """One step of a grace period that never waits: flip the index if no reader is counted on
        the inactive one (synchronize's wait, made a test); whether it flipped."""
        if not self.mutex.trylock(cpu):
            return False
        try:
            c = self.mem.load64(self.completed_off)
            if self.readers_active_idx(1 ^ (c & 1)):
                return False
            self.mem.store64(self.completed_off, c + 1)
            return True
        finally:
            self.mutex.unlock(cpu)

    def run_ready(self, cpu: Cpu) -> int:
        """Invoke, in order on each CPU's queue, the callbacks whose two flips have happened."""
        mem = self.mem
        c = mem.load64(self.completed_off) & COOKIE_MASK
        ran = 0
        for head_off, tail_off, base in zip(self.head_off, self.tail_off, self.entries_off):
            for k in range(mem.load64(tail_off), mem.load64(head_off)):
                e = base + (k % CBQ_LEN) * CB_ENTRY.itemsize
                if (c - mem.load32(e + 4)) & COOKIE_MASK < 2:
                    break
                cb_id = mem.load32(e)
                cpu.window("srcu_invoke_callbacks:invoke")
                cpu.trace(_EV_CB, cb_id)
                invoke_callback(cpu, cb_id, mem.load64(e + 8))
                mem.store64(tail_off, k + 1)
                ran += 1
        return ran

    def pending(self) -> int:
        """Callbacks queued and not yet invoked: the kthread's look before it works or sleeps,
        read through the harness's memory (no scheduling point, so a run that never calls
        call_srcu is scheduled as it was before there was one)."""
        raw = self.machine.raw
        return sum(raw.load64(h) - raw.load64(t) for h, t in zip(self.head_off, self.tail_off))

    def barrier(self, cpu: Cpu, timeout: float | None = None) -> bool:
        """srcu_barrier(): every callback call_srcu queued before the call has been invoked."""
        cpu.might_sleep("srcu_barrier")
        return self.machine.rcu.wait_for_queues(cpu, self.head_off, self.tail_off, timeout)

    def synchronize(self, cpu: Cpu) -> None:
        """synchronize_srcu(): every reader that began before the call has finished."""
        cpu.might_sleep("synchronize_srcu")
        self.mutex._acquire(cpu)
        seq = self.mem.load64(self.gp_seq_off)
        cpu.trace(_EV_GP_BEGIN, seq)
        self._wait_idx(cpu, 1 ^ (self.mem.load64(self.completed_off) & 1))
        self.mem.fetch_add64(self.completed_off, 1)
        self._wait_idx(cpu, 1 ^ (self.mem.load64(self.completed_off) & 1))
        self.mem.store64(self.gp_seq_off, seq + 1)
        cpu.trace(_EV_GP_END, seq + 1)
        self.mutex.unlock(cpu)

    def gp_seq(self) -> int:
        return self.mem.load64(self.gp_seq_off)
