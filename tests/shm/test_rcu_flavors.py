"""Every RCU flavour, the same tests (liburcu runs its tests once per flavour)."""

from __future__ import annotations

import multiprocess
import pytest

from shm import Cpu, Layout, Machine, Region, Segment, Spinlock, new_run_id, rcu_callback

CTX = multiprocess.get_context("fork")
FLAVORS = ["rcu", "srcu"]
SCRATCH = Layout("scratch", [Region("w", "<i4", 8)])
INSIDE, RELEASE, LEFT, SAW_LEFT, SPIN = (SCRATCH.offset("w", i) for i in range(5))


def flavor(m: Machine, name: str):
    return m.rcu if name == "rcu" else m.srcu[0]


def wait_for(mem, off, value=0):
    while mem.load32(off) == value:
        mem.futex_wait(off, value, None)


def set_and_wake(mem, off, v=1):
    mem.store32(off, v)
    mem.futex_wake(off, -1)


def reader(mname, sname, fl, kind="read_lock"):
    m = Machine.attach(mname)
    s = Segment.attach(sname, SCRATCH)
    cpu = Cpu(m, 0)
    f = flavor(m, fl)
    lock = Spinlock(m, m.add_segment(s), SPIN)
    enter, leave = {
        "read_lock": (lambda: f.read_lock(cpu), lambda t: f.read_unlock(cpu, t)),
        "irqs_off": (cpu.local_irq_disable, lambda t: cpu.local_irq_enable()),
        "preempt_off": (cpu.preempt_disable, lambda t: cpu.preempt_enable()),
        "spin_lock": (lambda: lock.lock(cpu), lambda t: lock.unlock(cpu)),
    }[kind]
    token = enter()
    set_and_wake(s.mem, INSIDE)
    wait_for(s.mem, RELEASE)
    set_and_wake(s.mem, LEFT)
    leave(token)


def writer(mname, sname, fl):
    m = Machine.attach(mname)
    s = Segment.attach(sname, SCRATCH)
    flavor(m, fl).synchronize(Cpu(m, 1))
    s.mem.store32(SAW_LEFT, s.mem.load32(LEFT))


@pytest.fixture
def world():
    run = new_run_id()
    m = Machine.create(run, ncpus=2, pool_pages=8)
    s = Segment.create(SCRATCH, run, 1)
    yield m, s
    for seg in (m, s):
        seg.unlink()
    s.close()
    m.close()


@pytest.mark.parametrize(
    "fl,kind", [(fl, "read_lock") for fl in FLAVORS] + [("rcu", k) for k in ("irqs_off", "preempt_off", "spin_lock")]
)
def test_grace_period_waits_for_a_reader_in_another_process(world, fl, kind):
    """Since the RCU flavours were consolidated, a section with interrupts or preemption off
    (a spinlock held) is a read-side critical section too: fast GUP relies on it."""
    m, s = world
    r = CTX.Process(target=reader, args=(m.seg.name, s.name, fl, kind))
    r.start()
    wait_for(s.mem, INSIDE)
    w = CTX.Process(target=writer, args=(m.seg.name, s.name, fl))
    w.start()
    # Release the reader only once the writer is waiting for it (or has wrongly finished).
    while not m.cpus["waiting_on"][1] and w.exitcode is None:
        m.mem.futex_wait(m.cpu_off(1, "waiting_on"), 0, 0.01)
    set_and_wake(s.mem, RELEASE)
    r.join()
    w.join()
    assert (r.exitcode, w.exitcode) == (0, 0)
    assert s.mem.load32(SAW_LEFT) == 1, "synchronize returned while the reader was still inside"
    assert flavor(m, fl).gp_seq() == 1


@pytest.mark.parametrize("fl", FLAVORS)
def test_nesting_and_no_reader(world, fl):
    m, _ = world
    cpu = Cpu(m, 0)
    f = flavor(m, fl)
    t1 = f.read_lock(cpu)
    t2 = f.read_lock(cpu)
    f.read_unlock(cpu, t2)
    f.read_unlock(cpu, t1)
    f.synchronize(Cpu(m, 1))
    assert f.gp_seq() == 1 and m.findings() == []


CALLED = []


@rcu_callback("tests: record")
def record(cpu, arg):
    cpu.machine.mem.store64(cpu.machine.seg.layout.offset("cpu", 0, "step"), arg)


@rcu_callback("tests: record on cpu 1's word")
def record_other(cpu, arg):
    cpu.machine.mem.store64(cpu.machine.seg.layout.offset("cpu", 1, "step"), arg)


def kthread(mname):
    m = Machine.attach(mname)
    m.rcu.kthread(Cpu(m, m.gp_cpu))


def test_call_rcu_runs_in_the_kthread_and_rcu_barrier_waits_for_it(world):
    m, _ = world
    k = CTX.Process(target=kthread, args=(m.seg.name,))
    k.start()
    cpu = Cpu(m, 0)
    m.rcu.call(cpu, record, 1234)
    assert m.rcu.barrier(cpu, timeout=30)
    assert int(m.cpus["step"][0]) == 1234
    assert m.rcu.gp_seq() >= 1 and m.rcu.pending() == 0
    m.rcu.stop_kthread()
    k.join()
    assert k.exitcode == 0


def test_call_srcu_waits_for_the_srcu_readers_before_it_and_holds_up_no_call_rcu(world):
    """call_srcu()'s callback runs once a reader inside srcu_read_lock before it has left; a
    call_rcu() callback queued behind it is not held up by that reader (rcu_barrier returns)."""
    m, _ = world
    cpu = Cpu(m, 0)
    idx = m.srcu[0].read_lock(cpu)
    m.srcu[0].call(cpu, record, 4321)
    m.rcu.call(cpu, record_other, 77)
    k = CTX.Process(target=kthread, args=(m.seg.name,))
    k.start()
    assert m.rcu.barrier(cpu, timeout=30)
    assert int(m.cpus["step"][1]) == 77
    assert int(m.cpus["step"][0]) == 0, "the SRCU callback ran while a reader from before it was inside"
    assert m.srcu[0].pending() == 1
    m.srcu[0].read_unlock(cpu, idx)
    assert m.srcu[0].barrier(cpu, timeout=30)
    assert int(m.cpus["step"][0]) == 4321 and m.srcu[0].pending() == 0
    m.rcu.stop_kthread()
    k.join()
    assert k.exitcode == 0 and m.findings() == []
