"""kmem_cache: allocation, the KASAN-style checks, and SLAB_TYPESAFE_BY_RCU's weaker rule."""

from __future__ import annotations

import numpy as np
import pytest

from shm import Cpu, Layout, Machine, Segment, new_run_id
from shm.slab import SLOT_MASK, KmemCache

OBJ = np.dtype([("a", "<i4"), ("b", "<i4")])


@pytest.fixture
def cache():
    run = new_run_id()
    m = Machine.create(run, ncpus=2, pool_pages=4, keep_going=True)
    seg = Segment.create(Layout("slab-test", KmemCache.regions("obj", OBJ, 4)), run, 1)
    idx = m.add_segment(seg)
    c = KmemCache(m, idx, "obj")
    c.init()
    yield m, c, Cpu(m, 0)
    seg.unlink()
    m.unlink()
    m.close()


def checks(m) -> list[str]:
    return [f["check"] for f in m.findings()]


def test_objects_are_handed_out_lifo_with_a_new_generation(cache):
    m, c, cpu = cache
    a = c.alloc(cpu)
    c.free(cpu, a)
    b = c.alloc(cpu)
    assert a & SLOT_MASK == b & SLOT_MASK and a != b and a and b
    assert [c.alloc(cpu) for _ in range(3)] and c.alloc(cpu) is None
    assert c.nr_free() == 0 and checks(m) == []


def test_a_stale_reference_is_use_after_free_and_a_second_free_is_double_free(cache):
    m, c, cpu = cache
    a = c.alloc(cpu)
    assert c.check(cpu, a, "fresh")
    c.free(cpu, a)
    c.load32(cpu, a, "a")
    c.free(cpu, a)
    assert checks(m) == ["slab.uaf", "slab.double-free"]


def test_typesafe_by_rcu_allows_a_reused_object_but_not_a_free_one_outside_rcu(cache):
    m, c, cpu = cache
    c.typesafe_by_rcu = True
    a = c.alloc(cpu)
    c.free(cpu, a)
    m.rcu.read_lock(cpu)
    assert c.check(cpu, a, "a free object, under RCU")
    m.rcu.read_unlock(cpu)
    c.alloc(cpu)
    assert c.check(cpu, a, "reused: the caller must revalidate")
    assert checks(m) == []
    b = c.alloc(cpu)
    c.free(cpu, b)
    assert not c.check(cpu, b, "a free object, outside RCU")
    assert checks(m) == ["slab.uaf"]
