"""The machine's checkers, one process: each rule and the finding it gives."""

from __future__ import annotations

import pytest

from shm import (
    GFP_KERNEL,
    GFP_NOWAIT,
    Cpu,
    Layout,
    LayoutError,
    Machine,
    Region,
    Segment,
    alloc_site,
    new_run_id,
)
from shm.events import EV
from shm.layout import Region as R
from shm.locks import lock_sites
from shm.segment import clean_dead_segments, list_segments, parse_name, segment_name

SITE = alloc_site("tests: page")


@pytest.fixture
def machine():
    m = Machine.create(new_run_id(), ncpus=2, pool_pages=8, keep_going=True)
    yield m
    m.unlink()
    m.close()


def checks(m: Machine) -> list[str]:
    return [f["check"] for f in m.findings()]


def test_segment_name_carries_pid_run_and_worker(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "0123456789abcdef")
    name = segment_name("abc123", 2, pid=4242)
    assert name == "mmtorture-4242-abc123-gw301234567-2"
    assert parse_name(name) == (4242, "abc123", "gw301234567", 2)
    assert parse_name("something-else") is None


def test_attach_with_another_layout_is_refused_clearly():
    run = new_run_id()
    seg = Segment.create(Layout("one", [Region("a", "<i8", 4)]), run, 5)
    try:
        with pytest.raises(LayoutError, match="has layout 'one'.*expected 'two'"):
            Segment.attach(seg.name, Layout("two", [Region("a", "<i8", 5)]))
        again = Segment.attach(seg.name, Layout("one", [Region("a", "<i8", 4)]))
        again.mem.store64(again.offset("a", 3), 9)
        assert int(seg.view("a")[3]) == 9
        again.close()
    finally:
        seg.unlink()
        seg.close()
    with pytest.raises(LayoutError, match="no shared-memory segment"):
        Segment.read_header(seg.name)


def test_clean_removes_segments_of_dead_creators():
    import posix_ipc

    name = segment_name("dead01", 0, pid=2**22 + 12345)  # no such pid
    posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, size=64).close_fd()
    assert name in list_segments()
    assert name in clean_dead_segments()
    assert name not in list_segments()


def test_layout_offsets_views_and_describe():
    lay = Layout("t", [Region("x", [("a", "<i4"), ("b", "<i8")], 3)])
    b = lay.regions["x"].dtype.fields["b"][1]
    assert lay.offset("x", 2, "b") - lay.offset("x", 0) == 2 * lay.stride("x") + b
    assert lay.describe(lay.offset("x", 1, "b")) == "x[1].b"
    with pytest.raises(IndexError):
        lay.offset("x", 3)


def test_page_lifecycle_use_after_free_and_double_free(machine):
    cpu = Cpu(machine, 0)
    pool = machine.pool
    ref = pool.alloc_page(cpu, GFP_KERNEL, SITE)
    assert pool.check(cpu, ref)
    pool.write(cpu, ref, 0, 42)
    assert pool.read(cpu, ref, 0) == 42
    assert pool.free_page(cpu, ref, SITE)
    assert checks(machine) == []
    pool.read(cpu, ref, 0)
    assert checks(machine) == ["pool.uaf"]
    assert not pool.free_page(cpu, ref, SITE)
    assert checks(machine)[-1] == "pool.double-free"
    again = pool.alloc_page(cpu, GFP_KERNEL, SITE)  # LIFO: the same frame, a new generation
    assert again & 0xFFFFFF == ref & 0xFFFFFF and again != ref
    pool.check(cpu, ref, "stale reference")
    assert checks(machine)[-1] == "pool.uaf"
    pool.free_page(cpu, again, SITE)
    assert pool.leaks() == []


def test_nowait_allocation_fails_at_the_injected_rate():
    m = Machine.create(new_run_id(), ncpus=1, pool_pages=8, nowait_fail_rate=1.0)
    try:
        cpu = Cpu(m, 0)
        assert m.pool.alloc_page(cpu, GFP_NOWAIT, SITE) is None
        ref = m.pool.alloc_page(cpu, GFP_KERNEL, SITE)
        assert ref is not None
        m.pool.free_page(cpu, ref, SITE)
    finally:
        m.unlink()
        m.close()


def test_leak_sweep_names_the_allocation_site(machine):
    cpu = Cpu(machine, 1)
    machine.pool.alloc_page(cpu, GFP_KERNEL, SITE)
    (leak,) = machine.pool.leaks()
    assert leak["site"] == "tests: page" and leak["pages"] == 1 and leak["alloc_cpus"] == [1]


def test_sleeping_under_a_spinlock_is_invalid_context(machine):
    cpu = Cpu(machine, 0)
    ptl = machine.pool.ptl(0)
    ptl.lock(cpu)
    machine.pool.alloc_page(cpu, GFP_KERNEL, SITE)
    ptl.unlock(cpu)
    (f,) = machine.findings()
    assert f["check"] == "context.sleep-in-atomic" and f["kind"] == "invalid-context"
    assert "machine:page[0].ptl" in f["objects"]["locks_held"]


def test_unlock_by_another_cpu_is_lock_misuse(machine):
    a, b = Cpu(machine, 0), Cpu(machine, 1)
    ptl = machine.pool.ptl(1)
    ptl.lock(a)
    ptl.unlock(b)
    assert checks(machine) == ["lock.bad-unlock"]


def test_an_uncontended_lock_is_one_step_and_its_trace_none(machine):
    """The trace ring is the harness's: writing it is no scheduling point, however inlined."""
    from shm._atomic import accesses

    cpu = Cpu(machine, 0)
    ptl = machine.pool.ptl(3)
    before = accesses()
    ptl.lock(cpu)
    assert accesses() - before == 1  # the cmpxchg
    ptl.unlock(cpu)
    assert accesses() - before == 2  # the xchg
    assert [e >> 36 & 0xFF for e in machine.traces[0] if e][-2:] == [EV["lock"], EV["unlock"]]
    assert not machine.findings()


def test_refcount_addition_on_zero_and_underflow(machine):
    cpu = Cpu(machine, 0)
    rc = machine.pool.refcount(2)
    rc.set(0)
    assert not rc.inc_not_zero(cpu)
    rc.inc(cpu)
    assert checks(machine) == ["refcount.inc-on-zero"]
    rc.set(1)
    assert rc.dec_and_test(cpu)
    assert not rc.dec_and_test(cpu)
    assert checks(machine) == ["refcount.inc-on-zero", "refcount.underflow"]
    assert "underflow" in machine.findings()[-1]["message"]


def test_rcu_read_unlock_without_lock_and_trace_ring(machine):
    cpu = Cpu(machine, 0)
    machine.rcu.read_unlock(cpu)
    (f,) = machine.findings()
    assert f["check"] == "rcu.unlock-imbalance"
    assert any(w for w in f["trace"])  # the finding carries the CPU's ring
    # and where it was reported from, the machine's own frames left out
    assert f["site"][0] == "test_rcu_read_unlock_without_lock_and_trace_ring"


def test_lock_sites_are_found_by_dtype(machine):
    sites = lock_sites(machine)
    assert ("spinlock", 0, machine.pool.field_off(3, "ptl")) in sites
    assert sum(1 for s in sites if s[0] == "mutex") == 2  # rcu gp_mutex + one srcu domain


def test_regions_reject_bad_counts():
    with pytest.raises(ValueError):
        R("x", "<i4", -1)


def test_percpu_ref_is_released_only_after_its_release_callback(machine):
    """Regression: the killer must not see the ref released while the callback still runs
    (found by `mmtorture run --all`: the late callback freed the killer's new object)."""
    from shm import PercpuRef, rcu_callback
    from shm.refcount import percpu_ref_switch_to_atomic_rcu

    seen = machine.cpu_off(0, "step")

    @rcu_callback("tests: percpu release")
    def release(cpu, addr):
        ref = PercpuRef.at(cpu.machine, addr)
        cpu.machine.mem.store64(seen, 10 + int(ref.released()))

    from shm import PERCPU_REF

    seg = Segment.create(Layout("scratch", [Region("ref", PERCPU_REF)]), new_run_id(), 1)
    cpu = Cpu(machine, 0)
    ref = PercpuRef(machine, machine.add_segment(seg), seg.offset("ref"))
    ref.init(cpu, release)
    ref.get(cpu)
    ref.kill(cpu)
    percpu_ref_switch_to_atomic_rcu(cpu, ref.addr)  # the grace period's callback, by hand
    assert not ref.released() and ref.read() == 1
    ref.put(cpu)
    assert machine.mem.load64(seen) == 10  # not yet released inside the callback
    assert ref.released() and machine.findings() == []
