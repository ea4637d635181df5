"""RCU and SRCU across processes.

RCU follows liburcu's memb flavour (src/urcu.c): a grace-period counter with
a phase bit, and per-CPU reader words.  Entering the outermost read-side
section copies the counter into the CPU's word; since the flavours were
consolidated, that is rcu_read_lock() or disabling preemption or interrupts
(Cpu.rcu_reader_enter); synchronize_rcu() flips the phase
twice, each time waiting until no CPU is still in a read-side critical
section begun in the old phase.  call_rcu() queues a *named* callback
(closures cannot cross processes) on the CPU's queue; the grace-period kthread
process runs one grace period per batch and then invokes the batch, like the
kernel's RCU kthreads.

SRCU (srcu.py) is the other flavour; its call_srcu queues are worked through
by this kthread too, without waiting for its readers.

Both flavours implement the same small `RcuFlavor` interface, so a test or
scenario written once runs for each.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from shm.checks import RCU_UNLOCK_IMBALANCE
from shm.events import EV
from shm.layout import Region
from shm.locks import MUTEX, WAIT_GP, WAIT_SHIFT, Mutex
from shm.protocols import CpuLike as Cpu
from shm.protocols import MachineLike as Machine

GP_COUNT = 1
GP_PHASE = 1 << 32
NEST_MASK = GP_PHASE - 1
CBQ_LEN = 1024

RCU_STATE = np.dtype(
    [
        ("gp_ctr", "<i8"),
        ("gp_seq", "<i8"),
        ("cb_wake", "<i4"),
        ("cb_done", "<i4"),
        ("kthread_sleeping", "<i4"),
        ("kthread_stop", "<i4"),
        ("callbacks_run", "<i8"),
        ("gp_mutex", MUTEX),
    ]
)
READER = np.dtype([("ctr", "<i8"), ("pad", "<i8", (7,))])
CB_ENTRY = np.dtype([("cb", "<i4"), ("cookie", "<i4"), ("arg", "<i8")])  # cookie: call_srcu's index count
COOKIE_MASK = 0x7FFFFFFF
SRCU_POLL_S = 0.001  # how often the kthread looks again at SRCU callbacks whose readers are inside
CBQ = np.dtype([("head", "<i8"), ("tail", "<i8"), ("pad", "<i8", (6,)), ("entries", CB_ENTRY, (CBQ_LEN,))])


_EV_GP_BEGIN = EV["gp-begin"]
_EV_GP_END = EV["gp-end"]
_EV_CALL_RCU = EV["call-rcu"]
_EV_CB = EV["rcu-callback"]

_CALLBACKS: dict[int, tuple[str, Callable[[Cpu, int], None]]] = {}


def rcu_callback(name: str) -> Callable:
    """Register fn(cpu, arg) under a name every process agrees on (kernel: an rcu_head's func)."""

    def register(fn: Callable[[Cpu, int], None]) -> Callable[[Cpu, int], None]:
        cb_id = zlib.crc32(name.encode()) & 0x7FFFFFFF
        known = _CALLBACKS.get(cb_id)
        if known and known[0] != name:
            raise ValueError(f"rcu callback {name!r} collides with {known[0]!r}")
        _CALLBACKS[cb_id] = (name, fn)
        fn.rcu_id = cb_id  # type: ignore[attr-defined]
        fn.rcu_name = name  # type: ignore[attr-defined]
        return fn

    return register


def callback_name(cb_id: int) -> str:
    entry = _CALLBACKS.get(cb_id)
    return entry[0] if entry else f"#{cb_id}"


def invoke_callback(cpu: Cpu, cb_id: int, arg: int) -> None:
    entry = _CALLBACKS.get(cb_id)
    if entry is None:
        raise LookupError(f"rcu callback #{cb_id} is not registered in this process")
    entry[1](cpu, arg)


class RcuFlavor(Protocol):
    """The operations every RCU flavour offers (liburcu's flavor.h, rcutorture's ops)."""

    name: str

    def read_lock(self, cpu: Cpu) -> Any: ...

    def read_unlock(self, cpu: Cpu, token: Any = None) -> None: ...

    def synchronize(self, cpu: Cpu) -> None: ...

    def gp_seq(self) -> int: ...


class Rcu:
    """RCU in the memb flavour, with call_rcu, rcu_barrier and a grace-period kthread."""

    name = "rcu"

    @staticmethod
    def regions(nslots: int) -> list[Region]:
        return [Region("rcu", RCU_STATE), Region("rcu_reader", READER, nslots), Region("rcu_cbq", CBQ, nslots)]

    def __init__(self, machine: Machine):
        self.machine = machine
        self.mem = machine.mem
        lay = machine.seg.layout
        self.nslots = machine.nslots
        self._draining = False
        self.gp_ctr_off = lay.offset("rcu", 0, "gp_ctr")
        self.gp_seq_off = lay.offset("rcu", 0, "gp_seq")
        self.cb_wake_off = lay.offset("rcu", 0, "cb_wake")
        self.cb_done_off = lay.offset("rcu", 0, "cb_done")
        self.sleeping_off = lay.offset("rcu", 0, "kthread_sleeping")
        self.stop_off = lay.offset("rcu", 0, "kthread_stop")
        self.cbs_run_off = lay.offset("rcu", 0, "callbacks_run")
        self.reader_off = [lay.offset("rcu_reader", i) for i in range(self.nslots)]
        self.head_off = [lay.offset("rcu_cbq", i, "head") for i in range(self.nslots)]
        self.tail_off = [lay.offset("rcu_cbq", i, "tail") for i in range(self.nslots)]
        self.entries_off = [lay.offset("rcu_cbq", i, "entries") for i in range(self.nslots)]
        self.gp_mutex = Mutex(machine, 0, lay.offset("rcu", 0, "gp_mutex"))
        if self.mem.load64(self.gp_ctr_off) == 0:
            self.mem.cmpxchg64(self.gp_ctr_off, 0, GP_COUNT)

    def close(self) -> None:
        pass

    # -- readers ---------------------------------------------------------
    def read_lock(self, cpu: Cpu) -> None:
        cpu.rcu_nesting += 1
        d = cpu.rcu_depth  # Cpu.rcu_reader_enter, inlined: on every fault's path
        cpu.rcu_depth = d + 1
        if d == 0:
            mem = self.mem
            mem.store64(self.reader_off[cpu.id], mem.load64(self.gp_ctr_off))

    def read_unlock(self, cpu: Cpu, token: Any = None) -> None:
        n = cpu.rcu_nesting
        if n <= 0:
            cpu.report(RCU_UNLOCK_IMBALANCE, "rcu_read_unlock() without rcu_read_lock()")
            return
        cpu.rcu_nesting = n - 1
        d = cpu.rcu_depth - 1
        cpu.rcu_depth = d
        if d == 0:
            self.mem.store64(self.reader_off[cpu.id], 0)

    # -- updaters --------------------------------------------------------
    def synchronize(self, cpu: Cpu) -> None:
        """synchronize_rcu(): returns after every pre-existing reader has finished."""
        cpu.might_sleep("synchronize_rcu")
        self.gp_mutex._acquire(cpu)
        seq = self.mem.load64(self.gp_seq_off)
        cpu.trace(_EV_GP_BEGIN, seq)
        for _ in range(2):
            self.mem.fetch_xor64(self.gp_ctr_off, GP_PHASE)
            self._wait_for_readers(cpu)
        self.mem.store64(self.gp_seq_off, seq + 1)
        cpu.trace(_EV_GP_END, seq + 1)
        self.gp_mutex.unlock(cpu)

    def _wait_for_readers(self, cpu: Cpu) -> None:
        mem = self.mem
        gp = mem.load64(self.gp_ctr_off)
        spin = cpu.sched.spin
        for i, off in enumerate(self.reader_off):
            if i == cpu.id and cpu.rcu_depth:
                continue  # already reported by might_sleep(); waiting would self-deadlock
            c = mem.load64(off)
            if not (c & NEST_MASK and (c ^ gp) & GP_PHASE):
                continue
            cpu.hmem.store64(cpu.waiting_off, (WAIT_GP << WAIT_SHIFT) | i)
            attempt = 0
            while c & NEST_MASK and (c ^ gp) & GP_PHASE:
                spin(cpu, attempt, mem, off, c, 64)
                attempt += 1
                c = mem.load64(off)
            cpu.hmem.store64(cpu.waiting_off, 0)

    def gp_seq(self) -> int:
        return self.mem.load64(self.gp_seq_off)

    def call(self, cpu: Cpu, callback: Callable | int, arg: int) -> None:
        """call_rcu(): callback(cpu, arg) runs in the kthread after a grace period."""
        i = cpu.id
        self.enqueue(cpu, self.head_off[i], self.tail_off[i], self.entries_off[i], callback, 0, arg)

    def enqueue(self, cpu: Cpu, head_off: int, tail_off: int, entries_off: int, callback, tag: int, arg: int) -> None:
        """Put a callback on a queue the kthread works through (this CPU's, call_rcu's or
        call_srcu's), waiting for room if it is full, and wake the kthread."""
        cb_id = callback if isinstance(callback, int) else getattr(callback, "rcu_id")  # noqa: B009
        mem = self.mem
        head = mem.load64(head_off)
        attempt = 0
        while (tail := mem.load64(tail_off)) <= head - CBQ_LEN:
            if self.drain(cpu):
                continue
            self._wake_kthread(force=True)
            cpu.sched.spin(cpu, attempt, mem, tail_off, tail, 64)
            attempt += 1
        e = entries_off + (head % CBQ_LEN) * CB_ENTRY.itemsize
        mem.store32(e, cb_id)
        self.machine.raw.store32(e + 4, tag)  # read by the kthread only: no scheduling point
        mem.store64(e + 8, arg)
        mem.store64(head_off, head + 1)
        cpu.trace(_EV_CALL_RCU, cb_id)
        self._wake_kthread()

    def kick(self) -> None:
        """Wake the grace-period kthread whether or not it said it sleeps (memory is short)."""
        self._wake_kthread(force=True)

    def _wake_kthread(self, force: bool = False) -> None:
        mem = self.mem
        if force or mem.load32(self.sleeping_off):
            mem.store32(self.sleeping_off, 0)
            mem.fetch_add32(self.cb_wake_off, 1)
            mem.futex_wake(self.cb_wake_off, -1)

    def drain(self, cpu: Cpu) -> bool:
        """Once the kthread was stopped (one CPU left: the quiescent phase), the caller invokes what
        is queued, as a CPU runs its softirqs before it would idle.  False if there was nothing to do."""
        if self._draining or not self.mem.load32(self.stop_off) or not self.pending():
            return False
        self._draining = True
        try:
            self.kthread(cpu)
        finally:
            self._draining = False
        return True

    def stopped(self) -> bool:
        """The kthread was asked to stop: whoever waits now runs the callbacks (drain)."""
        return bool(self.mem.load32(self.stop_off))

    def pending(self) -> int:
        """Callbacks queued and not yet invoked: call_rcu's and every SRCU domain's."""
        mem = self.mem
        own = sum(mem.load64(h) - mem.load64(t) for h, t in zip(self.head_off, self.tail_off))
        return own + sum(d.pending() for d in self.machine.srcu)

    def barrier(self, cpu: Cpu, timeout: float | None = None) -> bool:
        """rcu_barrier(): every callback queued before the call has been invoked.

        With a timeout (the harness's teardown, in case the kthread died),
        False if that did not happen in time.  Once the kthread was stopped (the
        quiescent phase, one CPU left), the caller invokes the callbacks itself."""
        cpu.might_sleep("rcu_barrier")
        return self.wait_for_queues(cpu, self.head_off, self.tail_off, timeout)

    def wait_for_queues(self, cpu: Cpu, head_offs: list[int], tail_offs: list[int], timeout: float | None) -> bool:
        """Every callback on these queues when called has been invoked (rcu_barrier, srcu_barrier)."""
        mem = self.mem
        if mem.load32(self.stop_off):
            self.drain(cpu)
            return True
        targets = [mem.load64(h) for h in head_offs]
        self._wake_kthread(force=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            done = mem.load32(self.cb_done_off)
            if all(mem.load64(t) >= want for t, want in zip(tail_offs, targets)):
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            cpu.sched.block(cpu, mem, self.cb_done_off, done, 0.05)

    # -- the grace-period kthread -----------------------------------------
    def kthread(self, cpu: Cpu, parent: int | None = None) -> None:
        """Main loop of the grace-period process: batch, grace period, invoke.

        Returns when asked to stop with nothing queued (stop_kthread wakes it),
        or when its parent is gone.  Its windows make it a scheduled CPU."""
        mem = self.mem
        n = self.nslots
        tails = [mem.load64(t) for t in self.tail_off]
        while True:
            srcu_left, moved = self._srcu_work(cpu)
            heads = [mem.load64(h) for h in self.head_off]
            if all(h == t for h, t in zip(heads, tails)):
                gone = bool(parent and os.getppid() != parent)
                if srcu_left and not gone:
                    if mem.load32(self.stop_off):
                        if not moved:
                            return  # draining, and a reader never left (its CPU crashed inside)
                        continue
                    cpu.sched.block(cpu, mem, self.cb_wake_off, mem.load32(self.cb_wake_off), SRCU_POLL_S)
                    continue
                if mem.load32(self.stop_off) or gone:
                    return
                seq = mem.load32(self.cb_wake_off)
                mem.store32(self.sleeping_off, 1)
                if (
                    mem.load32(self.stop_off)
                    or any(mem.load64(self.head_off[i]) != tails[i] for i in range(n))
                    or any(d.pending() for d in self.machine.srcu)
                ):
                    mem.store32(self.sleeping_off, 0)
                    continue
                cpu.sched.block(cpu, mem, self.cb_wake_off, seq, None)
                mem.store32(self.sleeping_off, 0)
                continue
            cpu.window("rcu_gp_kthread:gp-start")
            self.synchronize(cpu)
            ran = 0
            for i in range(n):
                base = self.entries_off[i]
                for k in range(tails[i], heads[i]):
                    e = base + (k % CBQ_LEN) * CB_ENTRY.itemsize
                    cb_id = mem.load32(e)
                    arg = mem.load64(e + 8)
                    cpu.window("rcu_do_batch:invoke")
                    cpu.trace(_EV_CB, cb_id)
                    invoke_callback(cpu, cb_id, arg)
                    ran += 1
                    mem.store64(self.tail_off[i], k + 1)
                tails[i] = heads[i]
            mem.fetch_add64(self.cbs_run_off, ran)
            mem.fetch_add32(self.cb_done_off, 1)
            mem.futex_wake(self.cb_done_off, -1)

    def _srcu_work(self, cpu: Cpu) -> tuple[int, bool]:
        """Each SRCU domain with callbacks: flip its index if the other one is drained, invoke what
        is ready; never waits for a reader, so call_rcu's callbacks are never held up by
        SRCU's.  (callbacks left, whether anything moved)."""
        mem = self.mem
        left, moved = 0, False
        for d in self.machine.srcu:
            if not d.pending():
                continue
            moved |= d.advance(cpu)
            ran = d.run_ready(cpu)
            if ran:
                moved = True
                mem.fetch_add64(self.cbs_run_off, ran)
                mem.fetch_add32(self.cb_done_off, 1)
                mem.futex_wake(self.cb_done_off, -1)
            left += d.pending()
        return left, moved

    def stop_kthread(self) -> None:
        self.mem.store32(self.stop_off, 1)
        self._wake_kthread(force=True)
