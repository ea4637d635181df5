"""The irq word: what an IPI and a broadcast TLB invalidation wait for."""

from __future__ import annotations

import pytest

from shm import Cpu, Machine, OsScheduler, new_run_id
from shm.cpu import INSN, IRQS_OFF, TLBI_DELIVERING


class RunAfter(OsScheduler):
    """A sender's spin loop that runs `then` on the n-th spin (the target moves on)."""

    def __init__(self, after: int, then):
        self.after, self.then, self.spins, self.seen = after, then, 0, []

    def spin(self, cpu, attempt, mem=None, off=0, seen=0, bits=32):
        self.spins += 1
        self.seen.append(seen)
        if self.spins == self.after:
            self.then()


@pytest.fixture
def machine():
    m = Machine.create(new_run_id(), ncpus=2, pool_pages=4)
    yield m
    m.unlink()
    m.close()


def word(m: Machine, cpu: int) -> int:
    return m.mem.load32(m.cpu_off(cpu, "irqs_disabled"))


def test_a_broadcast_tlbi_does_not_wait_for_a_cpu_with_interrupts_off(machine):
    """arm64's TLBI: the target is not interrupted, so irqs off does not hold it back (fast GUP
    is protected from a table free only by RCU then)."""
    m = machine
    target = Cpu(m, 1)
    target.local_irq_disable()
    sched = RunAfter(1, lambda: pytest.fail("a broadcast TLBI waited for interrupts"))
    seen = []
    Cpu(m, 0, sched).tlbi_broadcast([0, 1], lambda t, arg: seen.append((t, word(m, t))))
    assert seen == [(0, 0), (1, IRQS_OFF | TLBI_DELIVERING)]
    assert word(m, 1) == IRQS_OFF
    target.local_irq_enable()
    assert word(m, 1) == 0


def test_a_broadcast_tlbi_waits_for_the_instruction_in_flight(machine):
    m = machine
    target = Cpu(m, 1)
    target.insn_begin()
    sched = RunAfter(3, target.insn_end)
    seen = []
    Cpu(m, 0, sched).tlbi_broadcast([1], lambda t, arg: seen.append(word(m, t)))
    assert sched.spins == 3 and set(sched.seen) == {IRQS_OFF | INSN}
    assert seen == [TLBI_DELIVERING] and word(m, 1) == 0


def test_an_ipi_waits_for_the_instruction_in_flight_and_a_user_access_is_no_rcu_reader(machine):
    """A user instruction is atomic with respect to interrupts, but user mode is an RCU
    quiescent state: the instruction holds off an IPI, not a grace period."""
    m = machine
    target = Cpu(m, 1)
    target.insn_begin()
    assert target.rcu_depth == 0 and m.mem.load64(m.rcu.reader_off[1]) == 0
    sched = RunAfter(2, target.insn_end)
    Cpu(m, 0, sched).smp_call_function_many([1], lambda t, arg: None)
    assert sched.spins == 2 and word(m, 1) == 0
