"""A CPU: the per-process context every primitive runs on (the kernel's `current`).

The worker process *is* the CPU.  Counters only this CPU changes (preempt
count, RCU nesting, locks held) are plain Python attributes; what other
processes must see (irqs disabled, the current operation, the heartbeat, the
lock being waited on, the trace ring) is in shared memory.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from shm.checks import (
    IPI_IRQS_OFF,
    IRQ_IMBALANCE,
    LOCK_HELD_AT_RETURN,
    PREEMPT_IMBALANCE,
    SLEEP_IN_ATOMIC,
    Check,
)
from shm.events import ARG_MASK, EV, KIND_INDEX, SEQ_MASK, TRACE_MASK
from shm.locks import WAIT_IPI, WAIT_SHIFT
from shm.machine import CPU_OFFLINE
from shm.protocols import Scheduler
from shm.sched import OsScheduler

if TYPE_CHECKING:
    from shm.machine import Machine

_EV_FINDING = EV["finding"]
_EV_OP_BEGIN = EV["op-begin"]
_EV_OP_END = EV["op-end"]
_EV_IRQ_OFF = EV["irq-off"]
_EV_IRQ_ON = EV["irq-on"]
_EV_IPI = EV["ipi"]

IRQS_ON, IRQS_OFF, IPI_DELIVERING, INSN, TLBI_DELIVERING = 0, 1, 2, 4, 8


SITE_FRAMES = 4
_NOT_SITES = [os.path.dirname(os.path.abspath(__file__)) + os.sep]


def not_a_site(directory: str) -> None:
    """Leave the functions of files under `directory` out of findings' sites, as the machine's
    own are (what drives the software under test registers itself)."""
    d = os.path.abspath(directory) + os.sep
    if d not in _NOT_SITES:
        _NOT_SITES.append(d)


def finding_site(frames: int = SITE_FRAMES) -> str:
    """Where a finding is reported from: the innermost functions on the stack between the
    machine's and its driver's (the model's, the mechanism's), innermost first,
    '<'-separated.  No address or generation: what findings of one bug have in common,
    whichever run found them."""
    names: list[str] = []
    skip = tuple(_NOT_SITES)
    f: FrameType | None = sys._getframe(1)
    while f is not None and len(names) < frames:
        if not f.f_code.co_filename.startswith(skip):
            names.append(f.f_code.co_name)
        elif names:
            break  # out of the software, into what called it
        f = f.f_back
    return "<".join(names)


def irqs_off(word: int) -> bool:
    """A CPU's irq word says interrupts are disabled by its kernel code (not a user instruction)."""
    return bool(word & IRQS_OFF) and not word & INSN


class Cpu:
    def __init__(
        self,
        machine: Machine,
        cpu_id: int,
        sched: Scheduler | None = None,
        seed: int = 0,
    ):
        if not 0 <= cpu_id < machine.nslots:
            raise ValueError(f"cpu {cpu_id} out of range (machine has {machine.nslots} slots)")
        self.machine = machine
        self.mem = machine.mem
        self.hmem = machine.raw  # the harness's own words: never a step
        self.id = cpu_id
        self.owner_id = cpu_id + 1  # what a lock's owner word holds while this CPU owns it
        self.rng = random.Random(seed)
        self.preempt_count = 0
        self.rcu_nesting = 0
        self.rcu_depth = 0
        self.irqs_disabled = 0
        self.held: list[int] = []
        self.op = -1
        self.steps = 0
        self.ctx: Any = None
        self._tseq = 0
        self._tbase = machine.trace_off(cpu_id)
        self._op_off = machine.cpu_off(cpu_id, "op")
        self._hb_off = machine.cpu_off(cpu_id, "heartbeat")
        self._irq_off = machine.cpu_off(cpu_id, "irqs_disabled")
        self._rcu_reader_off = machine.rcu.reader_off[cpu_id]
        self._gp_ctr_off = machine.rcu.gp_ctr_off
        self.waiting_off = machine.cpu_off(cpu_id, "waiting_on")
        self.wait_ns_off = machine.cpu_off(cpu_id, "wait_ns")
        self.wait_since = 0
        self._wstat = machine.window_stat_off(cpu_id)
        self._window_off: dict[str, int] = {}
        self._ipi_waits_off = machine.cpu_off(cpu_id, "ipi_waits")
        self.lock_waits_off = machine.cpu_off(cpu_id, "lock_waits")
        self.lock_races_off = machine.cpu_off(cpu_id, "lock_races")
        self.set_scheduler(sched or OsScheduler())

    def set_scheduler(self, sched: Scheduler) -> None:
        self.sched = sched
        sched.attach(self)

    def window(self, name: str) -> None:
        """A place where the designer knows a preemption matters: the scheduler decides what
        happens here.  Counted per CPU (reached, and preempted or delayed), so that a clean
        run shows which races it went through."""
        off = self._window_off.get(name)
        if off is None:
            off = self._window_off[name] = self._wstat + 16 * self.machine.window_slot(name)
        mem = self.hmem
        mem.store64(off, mem.load64(off) + 1)
        if self.sched.window(self, name):
            mem.store64(off + 8, mem.load64(off + 8) + 1)

    def window_slot(self, name: str) -> int:
        """The machine's slot of a window this CPU reached, from its own cache: no shared access,
        so a scheduler may ask without becoming a step of the run."""
        return (self._window_off[name] - self._wstat) // 16

    def __repr__(self) -> str:
        return f"<cpu {self.id}>"

    # -- trace -----------------------------------------------------------
    @property
    def trace_seq(self) -> int:
        """The sequence number the next trace event of this CPU gets."""
        return self._tseq

    def trace(self, event: int, arg: int = 0) -> None:
        s = self._tseq
        self._tseq = s + 1
        self.hmem.store64(
            self._tbase + ((s & TRACE_MASK) << 3),
            ((s & SEQ_MASK) << 44) | (event << 36) | (arg & ARG_MASK),
        )

    # -- findings --------------------------------------------------------
    def report(self, check: Check, message: str, **objects: Any) -> None:
        """Record a finding of `check` with this CPU's trace; the run stops unless keep-going."""
        self.trace(_EV_FINDING, KIND_INDEX[check.kind])
        ring = self.machine.traces[self.id].copy()
        self.machine.record_finding(check, self.id, self.op, self.steps, message, objects, ring, finding_site())

    # -- context ---------------------------------------------------------
    def in_atomic(self) -> bool:
        return bool(self.preempt_count or self.rcu_nesting or self.irqs_disabled)

    def might_sleep(self, what: str) -> None:
        """The kernel's might_sleep(): sleeping in atomic context is a finding."""
        if self.preempt_count or self.rcu_nesting or self.irqs_disabled:
            self.report(
                SLEEP_IN_ATOMIC,
                f"BUG: sleeping function called from invalid context: {what}",
                preempt_count=self.preempt_count,
                rcu_nesting=self.rcu_nesting,
                irqs_disabled=self.irqs_disabled,
                locks_held=[self.machine.describe(a) for a in self.held],
            )

    def rcu_reader_enter(self, mem: Any = None) -> None:
        """This CPU is now in an RCU read-side critical section, of whatever kind.

        Since the RCU flavours were consolidated (v4.20), synchronize_rcu()
        waits for a section with preemption or interrupts disabled as for
        rcu_read_lock(): that is what fast GUP's irqs-off walk relies on when
        page tables are freed by RCU (MMU_GATHER_RCU_TABLE_FREE).  Disabling
        preemption or interrupts is a CPU-local act, not a shared access: its
        reader word is written through the harness's memory (no scheduling
        point) unless `mem` says otherwise (rcu_read_lock's)."""
        d = self.rcu_depth
        self.rcu_depth = d + 1
        if d == 0:
            m = mem or self.hmem
            m.store64(self._rcu_reader_off, m.load64(self._gp_ctr_off))

    def rcu_reader_exit(self, mem: Any = None) -> None:
        d = self.rcu_depth - 1
        self.rcu_depth = d
        if d == 0:
            (mem or self.hmem).store64(self._rcu_reader_off, 0)

    def preempt_disable(self) -> None:
        self.preempt_count += 1
        self.rcu_reader_enter()

    def preempt_enable(self) -> None:
        if self.preempt_count <= 0:
            self.report(PREEMPT_IMBALANCE, "preempt_enable() without preempt_disable()")
            return
        self.preempt_count -= 1
        self.rcu_reader_exit()

    def local_irq_disable(self) -> None:
        """Interrupts off: from here until local_irq_enable no IPI is taken on this CPU, and the
        section is an RCU reader.

        The per-CPU word doubles as the IPI handshake, a set of bits: IRQS_OFF
        (this CPU), IPI_DELIVERING while another CPU runs an IPI function on
        this CPU's behalf (disabling waits for it to end), INSN while a user
        instruction is in flight, TLBI_DELIVERING while a broadcast TLB
        invalidation drops this CPU's entries."""
        self.irqs_disabled += 1
        if self.irqs_disabled == 1:
            self._irq_word_set(self._irq_off, IRQS_OFF, IPI_DELIVERING)
            self.rcu_reader_enter()
            self.trace(_EV_IRQ_OFF)

    def local_irq_enable(self) -> None:
        if self.irqs_disabled <= 0:
            self.report(IRQ_IMBALANCE, "local_irq_enable() with interrupts already enabled")
            return
        self.irqs_disabled -= 1
        if self.irqs_disabled == 0:
            self.mem.fetch_and32(self._irq_off, ~IRQS_OFF)
            self.rcu_reader_exit()
            self.trace(_EV_IRQ_ON)

    def insn_begin(self) -> None:
        """A user load or store is in flight: its translation and access are one instruction.

        No IPI lands in the middle (the instruction retires first), and a
        broadcast TLB invalidation completes only after walks in flight have
        (what the architecture guarantees of TLBI; DSB waits for it).  User
        mode is a quiescent state for RCU: this is not a reader."""
        off = self._irq_off
        v = self.mem.cmpxchg32(off, IRQS_ON, IRQS_OFF | INSN)  # the loop's first try, inlined
        if v != IRQS_ON:
            self._irq_word_set(off, IRQS_OFF | INSN, IPI_DELIVERING | TLBI_DELIVERING, v=v)

    def insn_end(self) -> None:
        self.mem.fetch_and32(self._irq_off, ~(IRQS_OFF | INSN))

    def _irq_word_set(self, off: int, bits: int, wait_for: int, target: int = -1, v: int = IRQS_ON) -> int:
        """Set `bits` in an irq word once it has none of `wait_for`; how many spins it took.
        Waiting on another CPU's word (target >= 0) is shown as waiting for its IPI.  `v` is
        the value the word is expected to hold (what a first cmpxchg found, if the caller
        tried one)."""
        mem = self.mem
        attempt = 0
        while True:
            if not v & wait_for:
                if (w := mem.cmpxchg32(off, v, v | bits)) == v:
                    return attempt
                v = w
                if not v & wait_for:
                    continue
            if attempt == 0 and target >= 0:
                self.hmem.store64(self.waiting_off, (WAIT_IPI << WAIT_SHIFT) | target)
            self.sched.spin(self, attempt, mem, off, v)
            attempt += 1
            v = mem.load32(off)

    def smp_call_function_many(self, targets: Iterable[int], func: Callable[[int, Any], None], arg: Any = None) -> None:
        """smp_call_function_many(..., wait=true): func(target, arg) runs for every target CPU,
        and this returns once each has acknowledged.

        An IPI is taken only while the target has interrupts enabled: the
        sender waits on the target's irq word (a CPU inside local_irq_disable
        does not acknowledge), which is what fast GUP and the hardware walker
        rely on.  The handler runs in the sender's process on the target's
        shared state (its TLB), since a blocked process cannot run code; what
        the handler may touch is the target's shared memory only."""
        if self.irqs_disabled:
            self.report(IPI_IRQS_OFF, "smp_call_function_many() with interrupts disabled (can deadlock)")
        self._deliver(targets, func, arg, IPI_DELIVERING, IRQS_OFF | IPI_DELIVERING | INSN | TLBI_DELIVERING)

    def tlbi_broadcast(self, targets: Iterable[int], func: Callable[[int, Any], None], arg: Any = None) -> None:
        """A broadcast TLB invalidation (arm64's TLBI ...IS then DSB ISH; a hypervisor's flush):
        func(target, arg) drops the target's entries without interrupting it.

        It waits for the target's user instruction in flight, not for a CPU
        with interrupts off: fast GUP is not held off by it, so a page table
        may be freed after it only by RCU (tlb_remove_table) or after an
        explicit IPI (tlb_remove_table_sync_one)."""
        self._deliver(targets, func, arg, TLBI_DELIVERING, INSN | IPI_DELIVERING | TLBI_DELIVERING)

    def _deliver(
        self, targets: Iterable[int], func: Callable[[int, Any], None], arg: Any, bit: int, wait_for: int
    ) -> None:
        """Run func for each target once its irq word has none of `wait_for`, holding `bit` in it."""
        mem = self.mem
        machine = self.machine
        for t in targets:
            if t == self.id:
                func(t, arg)
                continue
            if self.hmem.load32(machine.cpu_off(t, "status")) >= CPU_OFFLINE:
                continue  # a crashed CPU is offline: it holds no TLB worth flushing and acks nothing
            off = machine.cpu_off(t, "irqs_disabled")
            if self._irq_word_set(off, bit, wait_for, t):
                self.hmem.store64(self.waiting_off, 0)
                self.hmem.fetch_add64(self._ipi_waits_off, 1)
            try:
                func(t, arg)
            finally:
                mem.fetch_and32(off, ~bit)
            self.trace(_EV_IPI, t)

    # -- operations ------------------------------------------------------
    def op_begin(self, op: int) -> None:
        self.op = op
        h, s = self.hmem, self._tseq  # trace(), inlined: twice an operation
        self._tseq = s + 1
        h.store64(self._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | (_EV_OP_BEGIN << 36) | op)
        h.store32(self._op_off, op)

    def op_end(self, done: int) -> None:
        """End of an operation: nothing may be held on the way back to user space."""
        h, s = self.hmem, self._tseq
        self._tseq = s + 1
        h.store64(self._tbase + ((s & TRACE_MASK) << 3), ((s & SEQ_MASK) << 44) | (_EV_OP_END << 36) | self.op)
        if self.held or self.preempt_count or self.rcu_nesting or self.irqs_disabled:
            self.report(
                LOCK_HELD_AT_RETURN,
                "returning to user space with locks held or in atomic context",
                locks_held=[self.machine.describe(a) for a in self.held],
                preempt_count=self.preempt_count,
                rcu_nesting=self.rcu_nesting,
                irqs_disabled=self.irqs_disabled,
            )
        h.store64(self._hb_off, done)
        h.store32(self._op_off, -1)
        self.op = -1
