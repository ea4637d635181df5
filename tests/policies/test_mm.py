"""The mm model on one CPU, in this process: what it does, and each of its checks catching
the corruption it exists for (every checker proven by a mutant it catches)."""

from __future__ import annotations

import pytest

from policies import World
from policies.mm import VM_FAULT_SIGSEGV, Vmf, broken, sweep
from policies.mm.pgtable import PTE_PRESENT, PTE_WRITE, mk_pte
from policies.vma_lookup.scenario import dup_mmap
from shm import GFP_KERNEL, Cpu, Machine, new_run_id
from shm.cpu import IPI_DELIVERING, IRQS_OFF, IRQS_ON
from shm.pool import PFN_MASK
from shm.sched import OsScheduler
from tests.policies.mmworld import AtWindow, checks, counter, drain_rcu, pte_at, touch, world_of


def test_faults_map_pages_and_the_sweep_is_clean(world):
    w = world
    assert not w.mm.access(w.cpu, 0, 3, True)
    touch(w, 3)
    touch(w, 4, write=False)
    assert w.mm.access(w.cpu, 0, 3, True) and w.mm.access(w.cpu, 0, 4, False)
    assert w.mem.load64(w.mm.mm_off(0, "rss")) == 1
    assert pte_at(w, 3) & PTE_WRITE
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == []


def test_a_write_to_the_zero_page_copies_on_write(world):
    w = world
    touch(w, 5, write=False)
    zero = pte_at(w, 5)
    touch(w, 5, write=True)
    assert pte_at(w, 5) >> 8 != zero >> 8
    assert w.mem.load64(w.mm.mm_off(0, "rss")) == 1
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == []


def test_munmap_frees_pages_and_tables_and_later_faults_get_sigsegv(world):
    w = world
    for v in range(0, 16):
        touch(w, v)
    tables = w.mem.load64(w.mm.mm_off(0, "pgtable_bytes"))
    free = w.pool.nr_free()
    w.policy.munmap(w, 0, 0, 16)
    # 16 pages, the two PTE tables of [0, 16) and the pmd table of [0, 32): the gap reaches vpn 32
    assert w.pool.nr_free() == free + 16 + 3
    assert w.mem.load64(w.mm.mm_off(0, "pgtable_bytes")) == tables - 3 * w.pool.page_size
    assert w.policy.fault(w, 0, 3, False) == VM_FAULT_SIGSEGV
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == []


def test_a_load_through_a_tlb_entry_whose_page_was_freed_is_stale_tlb(world):
    w = world
    touch(w, 3)
    table = w.mm.walk_pte_table(w.cpu, 0, 3, "test")
    off = w.mm.table_off(table, 3)
    page = w.pool.mem.xchg64(off, 0) >> 8
    w.pool.free_page(w.cpu, page)
    assert w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == ["tlb.stale"]


def test_a_tlb_entry_to_another_page_is_allowed_until_the_call_that_retires_it_returns(world):
    """A batched flush: between the zap and tlb_finish_mmu, a CPU may still load the old page
    while the PTE maps a new one.  Once the call promised the range (tlb_promise), it may not."""
    w = world
    touch(w, 3)
    other = w.pool.alloc_page(w.cpu, GFP_KERNEL)
    w.pool.mem.store64(w.pool.data_off(other & PFN_MASK, 0), 3)
    table = w.mm.walk_pte_table(w.cpu, 0, 3, "test")
    epoch = w.mm.tlb_retire(0, 3)
    old = w.pool.mem.xchg64(w.mm.table_off(table, 3), mk_pte(other, PTE_PRESENT))
    assert w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == []
    w.mm.tlb_promise(w.cpu, 0, 3, 4, epoch)
    w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == ["tlb.stale"]
    assert "by a call that has returned" in w.machine.findings()[0]["message"]
    w.pool.mem.store64(w.mm.table_off(table, 3), old)


def test_a_tlb_entry_made_after_the_retirement_is_not_stale_when_the_promise_comes(world):
    """MAP_FIXED: the old range is zapped, the new VMA published, a fault maps it and a CPU
    loads it, all before the mmap returns and promises the range."""
    w = world
    touch(w, 3)
    w.mm.madvise_dontneed(w.cpu, 0, 3, 4)
    touch(w, 3)
    w.mm.tlb_promise(w.cpu, 0, 3, 4)
    assert w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == []


def test_a_promise_covers_only_the_clearings_its_flush_covered(world):
    """MADV_DONTNEED A zaps and flushes vpn 3; a fault maps a new page, which this CPU loads;
    B (another CPU) clears it and has not flushed when A returns: A promised nothing of B's."""
    w = world
    touch(w, 3)
    tlb = w.mm.tlb_gather_mmu(w.cpu, 0)
    w.mm.zap_page_range(w.cpu, tlb, 3, 4)
    w.mm.tlb_finish_mmu(w.cpu, tlb)
    touch(w, 3, write=False)
    other = Cpu(w.machine, 1)
    late = w.mm.tlb_gather_mmu(other, 0)
    w.mm.zap_page_range(other, late, 3, 4)
    w.mm.tlb_promise(w.cpu, 0, 3, 4)
    assert w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == []
    w.mm.tlb_finish_mmu(other, late)
    w.mm.tlb_promise(other, 0, 3, 4)
    assert not w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == []


def test_madvise_dontneed_flushes_once_and_frees_after_the_flush(world, monkeypatch):
    w = world
    for v in (3, 4, 5):
        touch(w, v)
    free = w.pool.nr_free()
    flushes = []
    flush = w.mm.flush_tlb_mm_range

    def counting(cpu, mm, start, end, freed_tables=False):
        flushes.append((start, end, w.pool.nr_free()))
        flush(cpu, mm, start, end, freed_tables)

    monkeypatch.setattr(w.mm, "flush_tlb_mm_range", counting)
    w.mm.madvise_dontneed(w.cpu, 0, 0, 16)
    assert flushes == [(3, 6, free)]
    assert w.pool.nr_free() == free + 3
    assert not w.mm.access(w.cpu, 0, 4, False)
    assert w.mem.load32(w.mm.mm_off(0, "tlb_flush_pending")) == 0
    assert checks(w) == []


def _nested_madvise(w: World) -> None:
    """cpu 1 zaps vpn 3 and stops before its flush; cpu 0, which still has the translation,
    runs MADV_DONTNEED of the same page, finds it cleared, returns, and loads it again."""
    touch(w, 3)
    other = Cpu(w.machine, 1)
    tlb = w.mm.tlb_gather_mmu(other, 0)
    w.mm.zap_page_range(other, tlb, 3, 4)
    w.mm.madvise_dontneed(w.cpu, 0, 3, 4)
    w.mm.access(w.cpu, 0, 3, False)
    w.mm.tlb_finish_mmu(other, tlb)


def test_a_zap_that_finds_another_zaps_unflushed_ptes_flushes_the_whole_mm(world):
    w = world
    _nested_madvise(w)
    assert checks(w) == []
    assert counter(w, "tlb_flush_nested") == 1


def test_tlb_finish_mmu_without_the_nested_check_leaves_a_stale_tlb_entry():
    with world_of("mmap_lock", model=broken.FlushNotNested) as w:
        _nested_madvise(w)
        assert checks(w) == ["tlb.stale"]


def test_the_mmu_walking_a_freed_table_is_use_after_free(world):
    w = world
    touch(w, 3)
    table = w.mm.walk_pte_table(w.cpu, 0, 3, "test")
    w.pool.free_page(w.cpu, table)
    w.mm.access(w.cpu, 0, 4, False)
    assert "mm.walk-freed-table" in checks(w)


def test_sweep_finds_a_pte_outside_every_vma(world):
    w = world
    touch(w, 9)
    page = w.pool.alloc_page(w.cpu, GFP_KERNEL)
    table = w.mm.pte_alloc(w.cpu, 0, 20)
    w.pool.mem.store64(w.mm.table_off(table, 20 % 8), mk_pte(page, PTE_PRESENT | PTE_WRITE))
    sweep(w.mm, w.cpu)
    assert "mm.pte-in-no-vma" in checks(w)
    assert any("lies in no VMA" in f["message"] for f in w.machine.findings())


def test_sweep_finds_a_wrong_rss_counter(world):
    w = world
    touch(w, 3)
    w.mem.fetch_add64(w.mm.mm_off(0, "rss"), 1)
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == ["mm.rss"]


def test_sweep_finds_a_page_nothing_refers_to(world):
    w = world
    w.pool.alloc_page(w.cpu, GFP_KERNEL)
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == ["pool.leak"]


def test_sweep_finds_a_mapcount_that_disagrees_with_the_mappings(world):
    w = world
    touch(w, 3)
    page = pte_at(w, 3) >> 8
    w.pool.mem.fetch_add32(w.pool.field_off(page & PFN_MASK, "_mapcount"), 1)
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == ["mm.page-refs"]


def test_fork_shares_pages_write_protected_and_cow_keeps_the_child_snapshot(world):
    w = world
    touch(w, 3)
    child = dup_mmap(w, 0)
    assert child == 1
    assert not pte_at(w, 3) & PTE_WRITE
    page = pte_at(w, 3) >> 8
    assert w.pool.pages["_mapcount"][page & PFN_MASK] == 1
    touch(w, 3)
    assert pte_at(w, 3) >> 8 != page
    assert w.pool.pages["_mapcount"][page & PFN_MASK] == 0
    drain_rcu(w)
    sweep(w.mm, w.cpu)
    assert checks(w) == []


def test_a_write_to_a_page_another_mm_shares_is_an_invariant(world):
    w = world
    touch(w, 3)
    pte = pte_at(w, 3)
    dup_mmap(w, 0)
    w.mm.tlb_fill(w.cpu, w.mm.mm_id(0), 3, pte | PTE_WRITE, w.mm.tlb_epoch())
    assert w.mm.access(w.cpu, 0, 3, True)
    assert checks(w) == ["mm.cow-write-shared"]
    assert "COW page changed under another mm" in w.machine.findings()[0]["message"]


def test_fork_copying_an_anon_page_into_a_vma_without_anon_vma_is_an_invariant(world):
    w = world
    touch(w, 3)
    new = w.mm.mm_alloc(w.cpu)
    vma = w.mm.vm_area_alloc(w.cpu, new, 0, 16, 3)
    w.mm.copy_page_range(w.cpu, new, 0, vma, 0, 16)
    assert checks(w) == ["mm.fork-no-anon-vma"]
    assert "without anon_vma" in w.machine.findings()[0]["message"]


def test_installing_a_pte_for_a_zapped_vma_is_an_invariant(world):
    w = world
    touch(w, 0)
    vma = w.mm.vma_lookup(w.cpu, 0, 3)
    w.mm.vma_mark_zapped(vma, 0, 4)
    w.mm.handle_mm_fault(w.cpu, Vmf(0, vma, 3, True))
    assert checks(w) == ["mm.pte-after-zap"]
    assert "after munmap zapped it" in w.machine.findings()[0]["message"]


def test_a_pte_in_the_part_of_a_zapped_vma_a_split_kept_is_not_a_finding(world):
    """A speculative fault that validated before a partial munmap may install in the part the
    split kept: the zap never took that table's ptl, and the PTE is in a live VMA
    (found free-running on 4 CPUs; the check was wrong, not the design)."""
    w = world
    touch(w, 0)
    vma = w.mm.vma_lookup(w.cpu, 0, 8)
    w.mm.vma_mark_zapped(vma, 0, 4)
    w.mm.handle_mm_fault(w.cpu, Vmf(0, vma, 8, True))
    assert checks(w) == []


def test_a_first_anonymous_page_needs_mmap_lock(world):
    """__anon_vma_prepare asserts mmap_lock: a fault holding only its VMA must fall back."""
    w = world
    vma = w.mm.vma_lookup(w.cpu, 0, 3)
    lock = w.mm.mmap_lock(0)
    lock.down_read(w.cpu)
    w.mm.handle_mm_fault(w.cpu, Vmf(0, vma, 3, True))
    lock.up_read(w.cpu)
    assert checks(w) == []
    other = w.mm.vma_lookup(w.cpu, 0, 40)
    w.mm.handle_mm_fault(w.cpu, Vmf(0, other, 40, True))
    assert checks(w) == ["mm.anon-vma-unlocked"]


def test_freeing_a_table_that_still_maps_a_page_is_an_invariant(world):
    w = world
    touch(w, 3)
    w.mm.free_pgtables(w.cpu, 0, 0, 8, 0, 8)
    assert checks(w) == ["mm.free-mapped-table"]


class EnableAfter(OsScheduler):
    """A spin loop's scheduler that enables the target's interrupts after a few spins."""

    def __init__(self, target: Cpu, after: int):
        self.target, self.after, self.spins = target, after, 0

    def spin(self, cpu, attempt, mem=None, off=0, seen=0, bits=32):
        self.spins += 1
        assert seen == IRQS_OFF
        if self.spins == self.after:
            self.target.local_irq_enable()


def test_an_ipi_waits_until_the_target_enables_interrupts():
    m = Machine.create(new_run_id(), ncpus=2, pool_pages=4)
    try:
        target = Cpu(m, 1)
        target.local_irq_disable()
        sender = Cpu(m, 0, EnableAfter(target, 3))
        seen = []

        def handler(t, arg):
            seen.append((t, arg, m.mem.load32(m.cpu_off(t, "irqs_disabled"))))

        sender.smp_call_function_many([0, 1], handler, "flush")
        assert sender.sched.spins == 3
        assert seen == [(0, "flush", IRQS_ON), (1, "flush", IPI_DELIVERING)]
        assert m.mem.load32(m.cpu_off(1, "irqs_disabled")) == IRQS_ON
    finally:
        m.unlink()
        m.close()


class NeverSpin(OsScheduler):
    def spin(self, cpu, attempt, mem=None, off=0, seen=0, bits=32):
        raise AssertionError("the sender waited for an offline CPU")


def test_an_ipi_skips_a_crashed_cpu():
    """A crashed CPU is offline: its irq word may say disabled forever, and nobody waits for it."""
    from shm.machine import CPU_STATUS

    m = Machine.create(new_run_id(), ncpus=2, pool_pages=4)
    try:
        dead = Cpu(m, 1)
        dead.local_irq_disable()
        m.mem.store32(m.cpu_off(1, "status"), CPU_STATUS.index("crashed"))
        seen = []
        Cpu(m, 0, NeverSpin()).smp_call_function_many([0, 1], lambda t, arg: seen.append(t))
        assert seen == [0]
    finally:
        m.unlink()
        m.close()


def test_munmap_tears_down_under_mmap_lock_downgraded_to_read(world, monkeypatch):
    """vms_complete_munmap_vmas: the VMAs are detached under the write lock, the zap and
    free_pgtables run under the read lock, so another thread's fault can take it meanwhile."""
    w = world
    touch(w, 2)
    other = Cpu(w.machine, 1)
    lock = w.mm.mmap_lock(0)
    seen = []
    zap = w.mm.zap_page_range

    def zap_and_look(cpu, tlb, start, end, **k):
        got = lock.down_read_trylock(other)
        seen.append((got, lock.is_write_locked()))
        if got:
            lock.up_read(other)
        return zap(cpu, tlb, start, end, **k)

    monkeypatch.setattr(w.mm, "zap_page_range", zap_and_look)
    w.policy.munmap(w, 0, 0, 4)
    assert seen == [(True, False)]
    assert not lock.is_write_locked() and lock.readers() == [] and checks(w) == []


def _pte_of(w: World, vpn: int) -> tuple[int, int]:
    """(offset of the PTE of vpn in mm 0, the PTE)."""
    table, i = w.mm.walk_pmd(w.cpu, 0, vpn, "test")
    e = w.mm.read_entry(w.cpu, table, i, "test")
    off = w.mm.table_off(e >> 8, vpn % w.mm.geometry.pte)
    return off, w.mm.page_mem.load64(off)


def _share_as_fork_does(w: World, vpn: int, wrprotect: bool) -> int:
    """copy_present_pte's two steps on mm 0's page at vpn: the page shared (folio_try_dup_anon_rmap:
    no longer exclusive, one more mapping), then (optionally) the write-protect; the page."""
    off, pte = _pte_of(w, vpn)
    ref = pte >> 8
    assert w.mm.folio_try_dup_anon_rmap(w.cpu, ref)
    if wrprotect:
        w.mm.page_mem.store64(off, pte & ~PTE_WRITE)
    return ref


def test_a_write_while_fork_shares_the_page_is_allowed_until_the_fork_ends(world):
    """Between copy_present_pte's mapcount and its write-protect, and until dup_mmap flushes,
    the forking mm may still write the page: the kernel allows it.  Once the fork is over, a
    write to a page another mm shares is a broken COW."""
    w = world
    touch(w, 3)
    forking = w.mm.mm_off(0, "forking")
    w.mem.store32(forking, 1)
    _share_as_fork_does(w, 3, wrprotect=False)
    assert w.mm.access(w.cpu, 0, 3, True) and checks(w) == []
    w.mem.store32(forking, 0)
    assert w.mm.access(w.cpu, 0, 3, True)
    assert checks(w) == ["mm.cow-write-shared"]


def test_a_write_through_a_stale_tlb_entry_after_the_cow_copy_is_lost(world):
    """fb49c455323f's race: fork write-protected the page but has not flushed; another thread's
    write fault copies it while this thread still writes the old page through its TLB."""
    w = world
    touch(w, 3)
    other = Cpu(w.machine, 1)
    assert w.mm.access(other, 0, 3, True)  # the other thread's writable TLB entry
    w.mem.store32(w.mm.mm_off(0, "forking"), 1)
    _share_as_fork_does(w, 3, wrprotect=True)
    w.cpu.set_scheduler(AtWindow("wp_page_copy:before-ptl", lambda: w.mm.access(other, 0, 3, True)))
    lock = w.mm.mmap_lock(0)
    lock.down_read(w.cpu)
    w.mm.handle_mm_fault(w.cpu, Vmf(0, w.mm.vma_lookup(w.cpu, 0, 3), 3, True))
    lock.up_read(w.cpu)
    assert checks(w) == ["mm.lost-write"]


def test_a_pin_that_sees_another_mms_write_is_a_finding(world):
    """A GUP pin reads the memory of the mm it was taken from: a write by another mm meanwhile
    means copy-on-write reused a page the pin holds (CVE-2020-29374); one by its own mm is fine."""
    w = world
    touch(w, 3)
    other = Cpu(w.machine, 1)
    for pinned_from, want in ((0, []), (1, ["mm.pin-foreign-write"])):
        ref = w.mm.gup_fast(w.cpu, 0, 3)
        assert ref
        w.cpu.set_scheduler(AtWindow("gup:using-the-page", lambda: w.mm.access(other, 0, 3, True)))
        w.mm.use_pinned_page(w.cpu, pinned_from, ref, "test: the pin")
        assert checks(w) == want


@pytest.mark.parametrize("world", ["rcu_table_free"], indirect=True)
def test_exit_frees_page_tables_as_the_policy_does(world):
    """The model calls the policy's remove_tables at exit too: tables go by RCU there."""
    w = world
    touch(w, 3)
    rcu_freed = w.counter_index["tables_rcu_freed"]
    w.mm.mm_mem.store32(w.mm.mm_off(0, "mm_users"), 1)
    w.mm.mmput(w.cpu, 0)
    assert w.counts[rcu_freed] > 0
    drain_rcu(w)
    assert checks(w) == []
    assert set(int(p) for p in w.pool.allocated()) <= {w.mm.zero_page & PFN_MASK}


def test_an_rcu_callback_that_reaches_the_exited_mm_is_a_use_after_free():
    """exit_mmap queues the tables, mmdrop frees the mm; the callbacks run after."""
    with world_of("rcu_table_free", model=broken.CountsTablesAtRcuFree) as w:
        touch(w, 3)
        w.mm.mm_mem.store32(w.mm.mm_off(0, "mm_users"), 1)
        w.mm.mmput(w.cpu, 0)
        assert checks(w) == []
        drain_rcu(w)
        assert checks(w)[0] == "mm.uaf"
        assert "was freed" in w.machine.findings()[0]["message"]


def test_an_mm_id_names_one_generation_of_its_slot(world):
    w = world
    child = dup_mmap(w, 0)
    mmid = w.mm.mm_id(child)
    assert w.mm.mm_check(w.cpu, mmid, "test") and checks(w) == []
    w.mm.mmput(w.cpu, child)
    again = dup_mmap(w, 0)
    assert again == child and w.mm.mm_id(again) != mmid
    assert not w.mm.mm_check(w.cpu, mmid, "test")
    assert checks(w) == ["mm.uaf"] and "slot reused" in w.machine.findings()[0]["message"]


def test_taking_the_ptl_of_a_freed_table_is_a_use_after_free(world):
    """pte_offset_map_lock reads the pmd under rcu_read_lock so that a table freed by RCU cannot
    go before its ptl is taken; a table freed without waiting for anyone is caught there."""
    w = world
    touch(w, 3)
    table, i = w.mm.walk_pmd(w.cpu, 0, 3, "test")
    pte_table = w.mm.read_entry(w.cpu, table, i, "test") >> 8
    w.pool.free_page(w.cpu, pte_table)
    assert w.mm.pte_offset_map_lock(w.cpu, 0, 3) == (0, None)
    assert checks(w)[:1] == ["mm.walk-freed-table"]
    assert "spin_lock(ptl)" in w.machine.findings()[0]["message"]
