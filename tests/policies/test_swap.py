"""Non-present entries on one CPU: swap-out and swap-in, fork's and zap's handling of swap
entries, migration and its entries, and the checks each of them has (each proven by a mutant)."""

from __future__ import annotations

from policies.mm import broken, sweep
from policies.mm.pgtable import PTE_PRESENT, PTE_WRITE, SWP_MIGRATION_WRITE, is_swap_pte, swp_entry, swp_offset
from policies.vma_lookup.scenario import dup_mmap
from shm import Cpu
from shm.pool import PFN_MASK
from shm.sched import OsScheduler
from tests.policies.mmworld import AtWindow, checks, counter, pte_at, quiet, touch, world_of


def _written(w, vpn: int) -> int:
    """The page at vpn's write count (the model's second word of every anonymous page)."""
    return w.pool.read(w.cpu, pte_at(w, vpn) >> 8, 1)


def test_pageout_leaves_a_swap_entry_and_a_fault_reads_the_page_back(world):
    w = world
    touch(w, 3)
    touch(w, 3)
    free = w.pool.nr_free()
    assert w.mm.madvise_pageout(w.cpu, 0, 0, 16) == 1
    entry = pte_at(w, 3)
    assert is_swap_pte(entry) and not entry & PTE_PRESENT
    assert w.mm.swap_count(swp_offset(entry)) == 1
    assert w.pool.nr_free() == free + 1
    assert w.mem.load64(w.mm.mm_off(0, "swapents")) == 1 and w.mem.load64(w.mm.mm_off(0, "rss")) == 0
    assert quiet(w) == []
    touch(w, 3, write=False)
    assert pte_at(w, 3) & PTE_PRESENT and _written(w, 3) == 2
    assert w.mm.swap_count(swp_offset(entry)) == 0
    assert w.mem.load64(w.mm.mm_off(0, "swapents")) == 0 and w.mem.load64(w.mm.mm_off(0, "rss")) == 1
    assert quiet(w) == []


def test_a_swapped_out_page_read_through_an_old_tlb_entry_is_stale(world):
    """try_to_unmap_one flushes before the slot is written: a translation kept is a bug."""
    w = world
    touch(w, 3)
    flush = w.mm.flush_tlb_mm_range
    w.mm.flush_tlb_mm_range = lambda cpu, mm, s, e: None
    w.mm.madvise_pageout(w.cpu, 0, 3, 4)
    w.mm.flush_tlb_mm_range = flush
    w.mm.access(w.cpu, 0, 3, False)
    assert checks(w) == ["tlb.stale"]


def test_fork_shares_a_swap_slot_and_each_mm_reads_its_own_copy(world):
    w = world
    touch(w, 3)
    w.mm.madvise_pageout(w.cpu, 0, 3, 4)
    slot = swp_offset(pte_at(w, 3))
    child = dup_mmap(w, 0)
    assert w.mm.swap_count(slot) == 2
    assert w.mem.load64(w.mm.mm_off(child, "swapents")) == 1
    touch(w, 3)
    assert w.mm.swap_count(slot) == 1
    assert quiet(w) == []
    w.mm.mmput(w.cpu, child)
    assert w.mm.swap_count(slot) == 0
    assert quiet(w) == []


def test_munmap_gives_the_swap_slot_back(world):
    w = world
    touch(w, 3)
    w.mm.madvise_pageout(w.cpu, 0, 3, 4)
    slot = swp_offset(pte_at(w, 3))
    w.policy.munmap(w, 0, 0, 16)
    assert w.mm.swap_count(slot) == 0
    assert counter(w, "swap_entries_zapped") == 1
    assert quiet(w) == []


def test_zap_that_keeps_the_slot_is_a_swap_count_finding():
    with world_of("mmap_lock", model=broken.ZapKeepsSwapSlot) as w:
        touch(w, 3)
        w.mm.madvise_pageout(w.cpu, 0, 3, 4)
        w.mm.madvise_dontneed(w.cpu, 0, 0, 16)
        assert quiet(w) == ["mm.swap-count"]


def _racing_swapin(w) -> None:
    """cpu 1 swaps vpn 3 in while cpu 0's swap-in of the same entry waits before the ptl."""
    touch(w, 3)
    w.mm.madvise_pageout(w.cpu, 0, 3, 4)
    other = Cpu(w.machine, 1)
    w.cpu.set_scheduler(AtWindow("do_swap_page:before-ptl", lambda: touch_as(w, other, 3)))
    touch(w, 3, write=False)


def touch_as(w, cpu, vpn: int) -> None:
    mine, w.cpu = w.cpu, cpu
    try:
        touch(w, vpn, write=False)
    finally:
        w.cpu = mine


def test_two_swapins_of_one_entry_install_one_page(world):
    w = world
    _racing_swapin(w)
    assert counter(w, "swapin_raced") == 1 and counter(w, "swapins") == 1
    assert quiet(w) == []


def test_a_swapin_without_pte_same_reads_a_freed_slot():
    with world_of("mmap_lock", model=broken.SwapinSkipsPteSame) as w:
        _racing_swapin(w)
        assert checks(w)[0] == "mm.swap-freed"


def test_migrate_moves_a_page_and_keeps_its_contents(world):
    w = world
    touch(w, 3)
    touch(w, 3)
    old = pte_at(w, 3) >> 8
    free = w.pool.nr_free()
    assert w.mm.migrate_vma(w.cpu, 0, 0, 16) == 1
    assert pte_at(w, 3) >> 8 != old and pte_at(w, 3) & PTE_WRITE
    assert _written(w, 3) == 2 and w.pool.nr_free() == free
    assert not w.pool.alive(old)
    assert quiet(w) == []


def test_a_page_someone_holds_does_not_move_and_gets_its_pte_back(world):
    w = world
    touch(w, 3)
    pte = pte_at(w, 3)
    page = (pte >> 8) & PFN_MASK
    w.cpu.set_scheduler(AtWindow("migrate_vma:collected", lambda: w.pool.refcount(page).inc(w.cpu)))
    assert w.mm.migrate_vma(w.cpu, 0, 3, 4) == 0
    assert pte_at(w, 3) == pte and counter(w, "migrations_failed") == 1
    w.pool.put_page(w.cpu, pte >> 8)
    assert quiet(w) == []


class UnlockWhenWaited(OsScheduler):
    """The migration's part, as the fault sleeps: it unlocks the page (and we note the wait)."""

    def __init__(self, unlock):
        self.unlock, self.waits = unlock, 0

    def spin(self, cpu, attempt, mem=None, off=0, seen=0, bits=32):
        self.waits += 1
        self.unlock()


def test_a_fault_on_a_migration_entry_waits_for_the_page_unlock(world):
    """migration_entry_wait: while the migration holds the page locked, the fault sleeps."""
    w = world
    touch(w, 3)
    other = Cpu(w.machine, 1)
    waited = []

    def fault_meanwhile() -> None:
        ref = swp_offset(pte_at(w, 3))
        sched = UnlockWhenWaited(lambda: w.mm.folio_unlock(other, ref))
        other.set_scheduler(sched)
        w.cpu, mine = other, w.cpu
        try:
            assert not w.mm.access(other, 0, 3, False)
            waited.append((w.policy.fault(w, 0, 3, False), sched.waits))
            assert w.mm.folio_trylock(other, ref)  # the migration's again, which unlocks it at its end
        finally:
            w.cpu = mine

    w.cpu.set_scheduler(AtWindow("migrate_vma:collected", fault_meanwhile))
    w.mm.migrate_vma(w.cpu, 0, 3, 4)
    assert waited == [(0, 1)] and counter(w, "migration_waits") == 1
    assert quiet(w) == []


def test_a_fault_on_a_migration_entry_no_migration_holds_finds_it_stuck():
    with world_of("mmap_lock", model=broken.LeavesFailedMigration) as w:
        touch(w, 3)
        pte = pte_at(w, 3)
        w.cpu.set_scheduler(
            AtWindow("migrate_vma:collected", lambda: w.pool.refcount((pte >> 8) & 0xFFFFFF).inc(w.cpu))
        )
        w.mm.migrate_vma(w.cpu, 0, 3, 4)
        w.policy.fault(w, 0, 3, False)
        assert checks(w)[0] == "mm.stuck-migration"


def test_a_migration_entry_at_a_quiescent_point_is_stuck(world):
    w = world
    touch(w, 3)
    table = w.mm.walk_pte_table(w.cpu, 0, 3, "test")
    off = w.mm.table_off(table, 3)
    pte = w.mm.page_mem.load64(off)
    w.mm.page_mem.store64(off, swp_entry(SWP_MIGRATION_WRITE, pte >> 8))
    sweep(w.mm, w.cpu)
    assert checks(w)[0] == "mm.stuck-migration"
    w.mm.page_mem.store64(off, pte)
