"""shm.Memory: the atomics, their bounds checks, and futexes across processes."""

from __future__ import annotations

import mmap

import multiprocess
import numpy as np
import posix_ipc
import pytest

from shm import Memory, new_run_id
from shm.segment import segment_name

CTX = multiprocess.get_context("fork")


def test_operations_return_old_values_signed():
    mem = Memory(bytearray(64))
    assert mem.fetch_add64(0, 5) == 0
    assert mem.load64(0) == 5
    assert mem.fetch_sub32(8, 1) == 0
    assert mem.load32(8) == -1  # atomic_t is signed
    assert mem.cmpxchg32(8, 0, 7) == -1  # failed: returns what it found
    assert mem.cmpxchg32(8, -1, 7) == -1 and mem.load32(8) == 7
    assert mem.xchg64(16, 0xFFFFFFFFFFFFFFFF) == 0 and mem.load64(16) == -1
    assert mem.fetch_or32(24, 0b1010) == 0 and mem.fetch_and32(24, 0b0110) == 0b1010
    assert mem.fetch_xor32(24, 0b0011) == 0b0010 and mem.load32(24) == 0b0001
    mem.store32(28, 0xFFFFFFFF)
    assert mem.load32(28) == -1
    assert mem.nbytes == 64


@pytest.mark.parametrize("off", [-1, 64, 61, 1 << 62])
def test_out_of_range_offset_raises_index_error(off):
    mem = Memory(bytearray(64))
    with pytest.raises(IndexError):
        mem.load32(off)


def test_misaligned_offset_raises_value_error():
    mem = Memory(bytearray(64))
    with pytest.raises(ValueError):
        mem.fetch_add64(4, 1)
    with pytest.raises(ValueError):
        mem.store32(2, 1)


def test_value_too_wide_raises_overflow_error():
    mem = Memory(bytearray(64))
    with pytest.raises(OverflowError):
        mem.store32(0, 1 << 32)
    with pytest.raises(OverflowError):
        mem.store64(0, 1 << 64)


def test_read_only_buffer_is_refused_and_release_detaches():
    with pytest.raises(BufferError):
        Memory(bytes(64))
    buf = bytearray(64)
    mem = Memory(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")  # the buffer stays exported while the Memory lives
    mem.release()
    with pytest.raises(ValueError):
        mem.load32(0)
    buf.extend(b"x")


def test_futex_wait_times_out_and_returns_at_once_on_mismatch():
    mem = Memory(bytearray(64))
    assert mem.futex_wait(0, 0, 0.001) is False
    assert mem.futex_wait(0, 1, None) is True  # the word is 0, not 1: no sleep
    assert mem.futex_wake(0, 1) == 0
    with pytest.raises(ValueError):
        mem.futex_wait(0, 0, -1.0)


@pytest.fixture
def shared():
    name = "/" + segment_name(new_run_id(), 9)
    seg = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    m = mmap.mmap(seg.fd, 4096)
    seg.close_fd()
    mem = Memory(m)
    yield name, mem
    mem.release()
    m.close()
    posix_ipc.unlink_shared_memory(name)


def _attach(name):
    seg = posix_ipc.SharedMemory(name)
    m = mmap.mmap(seg.fd, 4096)
    seg.close_fd()
    return Memory(m)


def _adder(name, n):
    mem = _attach(name)
    mem.fetch_add32(64, 1)
    mem.futex_wake(64, 1)
    while mem.load32(68) == 0:
        mem.futex_wait(68, 0, None)
    f = mem.fetch_add64
    for _ in range(n):
        f(0, 1)


def test_two_processes_fetch_add_a_million_times_each(shared):
    name, mem = shared
    procs = [CTX.Process(target=_adder, args=(name, 1_000_000)) for _ in range(2)]
    for p in procs:
        p.start()
    while (ready := mem.load32(64)) < 2:
        mem.futex_wait(64, ready, None)
    mem.store32(68, 1)
    mem.futex_wake(68, -1)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert mem.load64(0) == 2_000_000


def _waiter(name):
    mem = _attach(name)
    mem.store32(8, 1)  # about to sleep
    mem.futex_wake(8, 1)
    while mem.load32(0) == 0:
        mem.futex_wait(0, 0, None)
    mem.store32(4, mem.load32(0) + 100)


def test_futex_wake_crosses_processes(shared):
    name, mem = shared
    p = CTX.Process(target=_waiter, args=(name,))
    p.start()
    while mem.load32(8) == 0:
        mem.futex_wait(8, 0, None)
    mem.store32(0, 7)
    mem.futex_wake(0, 1)  # asleep: woken; not yet asleep: it sees 7 and does not sleep
    p.join()
    assert p.exitcode == 0
    assert mem.load32(4) == 107


def test_every_access_of_a_counted_memory_is_a_step_and_the_countdown_calls_the_hook_before_it():
    from shm._atomic import accesses, record, recorded, set_countdown, set_hook

    mem, raw = Memory(bytearray(64), tag=3), Memory(bytearray(64), counted=False)
    before = accesses()
    mem.load32(0)
    mem.store64(8, 1)
    mem.cmpxchg32(0, 0, 1)
    mem.fill(16, 16, 0)
    raw.load32(0)
    raw.fill(0, 8, 0)
    assert accesses() - before == 4 and mem.counted and not raw.counted
    seen = []
    set_hook(lambda kind, tag, off: seen.append((kind, tag, off, mem.load32(8))))
    try:
        set_countdown(3)
        mem.load32(0)
        mem.load32(4)
        mem.store32(8, 7)  # the hook runs before this store, and its own accesses are no steps
        mem.load32(0)
        assert seen == [(1, 3, 8, 1)]
        buf = np.zeros(4, dtype="<i8")
        record(buf)
        mem.load64(16)
        mem.fetch_add32(4, 1)
        mem.fill(0, 64, 0)
        assert recorded() == 3
        assert [int(x) >> 56 for x in buf[:3]] == [3, 3, 3]
        assert [(int(x) >> 48) & 0xFF for x in buf[:3]] == [0, 2, 8 + 6]
        assert [int(x) & 0xFFFFFFFFFFFF for x in buf[:3]] == [16, 4, 0]
    finally:
        record(None)
        set_hook(None)
    with pytest.raises(IndexError):
        mem.fill(60, 8, 0)


def test_a_walker_checks_each_table_and_each_of_its_loads_is_a_step():
    """Walker: the C walk down tables in pool pages (a page-table walk) reads what the same
    loads in Python read, in the same order, and names a freed table instead of following it."""
    from shm._atomic import Walker, record, recorded

    page0, stride, data0, psize, pfn_bits, shift, present, live = 0, 16, 64, 32, 24, 8, 1, 1
    mem = Memory(bytearray(64 + 4 * psize), tag=5)

    def table(pfn: int, gen: int) -> int:
        mem.store64(page0 + pfn * stride, gen << 32 | live)
        return gen << pfn_bits | pfn

    def entry(ref: int) -> int:
        return ref << shift | present

    root, mid, leaf = table(0, 3), table(1, 4), table(2, 5)
    mem.store64(data0 + 8 * 1, entry(mid))
    mem.store64(data0 + psize + 8 * 2, entry(leaf))
    mem.store64(data0 + 2 * psize + 8 * 3, 0x77 << shift | present)
    w = Walker(mem, page0, stride, data0, psize, pfn_bits, shift, present, live)
    buf = np.zeros(8, dtype="<i8")
    record(buf)
    try:
        assert w.walk(root, 1, 2, 3) == 0x77 << shift | present and w.freed == 0
        assert recorded() == 6
        offs = [int(x) & 0xFFFFFFFFFFFF for x in buf[:6]]
        assert offs == [data0 + 8, 0, data0 + psize + 16, stride, data0 + 2 * psize + 24, 2 * stride]
    finally:
        record(None)
    assert w.walk(root, 2, 0) == 0 and not w.stale  # not present: the walk stops
    assert w.walk(0, 1) == 0 and not w.stale  # no table: nothing walked
    assert w.load(mid, 2) == entry(leaf) and w.load(mid, 0) == 0 and not w.stale
    mem.store64(page0 + 1 * stride, 5 << 32)  # mid freed and reused: another generation
    assert w.walk(root, 1, 2, 3) == 0 and w.stale and w.freed == mid
    assert w.load(mid, 2) == 0 and w.stale and w.freed == mid
    assert w.load(root, 1) == entry(mid) and not w.stale
    assert w.load(0, 0) == 0 and w.stale and w.freed == 0  # reference 0 names no live table
    for bad in ((root, psize // 8), (root, -1), (9, 0)):
        with pytest.raises(IndexError):
            w.load(*bad)
    with pytest.raises(IndexError):
        w.walk(9, 0)
    with pytest.raises(ValueError):
        Walker(mem, page0, 12, data0, psize, pfn_bits, shift, present, live)
    with pytest.raises(ValueError):
        Walker.__new__(Walker).load(1, 0)  # not initialised: an error, not a crash


def test_a_treiber_stack_pops_what_was_pushed_last_in_three_steps():
    """stack_pop/stack_push: the free lists of the pool and the slab caches, each access a step
    (load the head, the next word, cmpxchg the head) as in the Python they replaced."""
    from shm._atomic import accesses, record

    mem = Memory(bytearray(8 + 4 * 8))
    head, next0, stride = 0, 8, 8
    assert mem.stack_pop(head, next0, stride) == -1
    before = accesses()
    for i in (2, 0, 3):
        mem.stack_push(head, next0, stride, i)
    assert accesses() - before == 9
    assert mem.load64(head) >> 32 == 3  # the tag counts the changes of the head (ABA)
    buf = np.zeros(4, dtype="<i8")
    record(buf)
    try:
        assert mem.stack_pop(head, next0, stride) == 3
        assert [(int(x) >> 48) & 0xFF for x in buf[:3]] == [0, 0, 2]  # load head, load next, cmpxchg
        assert [int(x) & 0xFFFFFFFFFFFF for x in buf[:3]] == [head, next0 + 3 * stride, head]
    finally:
        record(None)
    assert [mem.stack_pop(head, next0, stride) for _ in range(3)] == [0, 2, -1]
    with pytest.raises(IndexError):
        mem.stack_push(head, next0, stride, 4)
    with pytest.raises(ValueError):
        mem.stack_pop(head, next0, 6)
