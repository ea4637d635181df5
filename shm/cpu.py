"""A CPU: the per-process context every primitive runs on (the kernel's `current`).

The worker process *is* the CPU.  Counters only this CPU changes (preempt
count, RCU nesting, locks held) are plain Python attributes; what other
processes must see (irqs disabled, the current operation, the heartbeat, the
lock being waited on, the trace ring) is in shared memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
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
from shm.sched import OsScheduler, Scheduler

if TYPE_CHECKING:
    from shm.machine import Machine

_EV_FINDING = EV["finding"]
_EV_OP_BEGIN = EV["op-begin"]
_EV_OP_END = EV["op-end"]
_EV_IRQ_OFF = EV["irq-off"]
_EV_IRQ_ON = EV["irq-on"]
_EV_IPI = EV["ipi"]

IRQS_ON, IRQS_OFF, IPI_DELIVERING = 0, 1, 2


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
        self.me = cpu_id + 1
        self.rng = random.Random(seed)
        self.preempt_count = 0
        self.rcu_nesting = 0
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

    def __repr__(self) -> str:
        return f"<cpu {self.id}>"

    # -- trace -----------------------------------------------------------
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
        self.machine.record_finding(check, self.id, self.op, self.steps, message, objects, ring)

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

    def preempt_disable(self) -> None:
        self.preempt_count += 1

    def preempt_enable(self) -> None:
        if self.preempt_count <= 0:
            self.report(PREEMPT_IMBALANCE, "preempt_enable() without preempt_disable()")
            return
        self.preempt_count -= 1

    def local_irq_disable(self, quiet: bool = False) -> None:
        """Interrupts off: from here until local_irq_enable no IPI is taken on this CPU.

        The per-CPU word doubles as the IPI handshake: 0 enabled, IRQS_OFF
        disabled by this CPU, IPI_DELIVERING while another CPU runs an IPI
        function on this CPU's behalf (so disabling waits for that to end).
        `quiet` leaves it out of the trace (a user load's instruction-long
        section, which would flood the ring)."""
        self.irqs_disabled += 1
        if self.irqs_disabled == 1:
            mem, off = self.mem, self._irq_off
            attempt = 0
            while (v := mem.cmpxchg32(off, IRQS_ON, IRQS_OFF)) != IRQS_ON:
                self.sched.spin(self, attempt, mem, off, v)
                attempt += 1
            if not quiet:
                self.trace(_EV_IRQ_OFF)

    def local_irq_enable(self, quiet: bool = False) -> None:
        if self.irqs_disabled <= 0:
            self.report(IRQ_IMBALANCE, "local_irq_enable() with interrupts already enabled")
            return
        self.irqs_disabled -= 1
        if self.irqs_disabled == 0:
            self.mem.store32(self._irq_off, IRQS_ON)
            if not quiet:
                self.trace(_EV_IRQ_ON)

    def smp_call_function_many(self, targets: Iterable[int], func: Callable[[int, Any], None],
                               arg: Any = None) -> None:
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
        mem = self.mem
        machine = self.machine
        for t in targets:
            if t == self.id:
                func(t, arg)
                continue
            if self.hmem.load32(machine.cpu_off(t, "status")) >= CPU_OFFLINE:
                continue  # a crashed CPU is offline: it holds no TLB worth flushing and acks nothing
            off = machine.cpu_off(t, "irqs_disabled")
            attempt = 0
            while (v := mem.cmpxchg32(off, IRQS_ON, IPI_DELIVERING)) != IRQS_ON:
                if attempt == 0:
                    self.hmem.store64(self.waiting_off, (WAIT_IPI << WAIT_SHIFT) | t)
                self.sched.spin(self, attempt, mem, off, v)
                attempt += 1
            if attempt:
                self.hmem.store64(self.waiting_off, 0)
                self.hmem.fetch_add64(self._ipi_waits_off, 1)
            try:
                func(t, arg)
            finally:
                mem.store32(off, IRQS_ON)
            self.trace(_EV_IPI, t)

    # -- operations ------------------------------------------------------
    def op_begin(self, op: int) -> None:
        self.op = op
        self.hmem.store32(self._op_off, op)
        self.trace(_EV_OP_BEGIN, op)

    def op_end(self, done: int) -> None:
        """End of an operation: nothing may be held on the way back to user space."""
        self.trace(_EV_OP_END, self.op)
        if self.held or self.preempt_count or self.rcu_nesting or self.irqs_disabled:
            self.report(
                LOCK_HELD_AT_RETURN,
                "returning to user space with locks held or in atomic context",
                locks_held=[self.machine.describe(a) for a in self.held],
                preempt_count=self.preempt_count,
                rcu_nesting=self.rcu_nesting,
                irqs_disabled=self.irqs_disabled,
            )
        self.hmem.store64(self._hb_off, done)
        self.hmem.store32(self._op_off, -1)
        self.op = -1
