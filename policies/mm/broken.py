"""DELIBERATELY BROKEN variants of the mm model, one kernel function each.

A mechanism's policy runs on `MmModel` or on one of these (its `model`
field).  Each breaks one function the way a real patch could, and names
the check of the model that must catch it: they are how the model's own
checks are proven (`mmtorture list --checks`), beside the mechanisms'
races.  Any mechanism built on the model can run them.
"""

from __future__ import annotations

from policies.mm.mm import BroadcastTlbiModel, MmModel
from policies.mm.mmu_gather import MmuGather
from policies.mm.pgtable import FLAG_BITS


class IgnoresSpecialPtes(MmModel):
    """DELIBERATELY BROKEN: vm_normal_page() returns the zero page's struct page.

    vm_normal_page() exists so that special mappings (the zero page, pfn
    maps) are never treated as normal pages; without the test, zap removes
    a mapping the zero page never counted.  Must trip mm.rmap-underflow."""

    def vm_normal_page(self, pte: int) -> int:
        return pte >> FLAG_BITS


class LosesRssBatch(MmModel):
    """DELIBERATELY BROKEN: the RSS that zap_pte_range and copy_pte_range counted is never added.

    check_mm's "BUG: Bad rss-counter state" at exit.  Must trip mm.rss."""

    def add_mm_rss_vec(self, mm: int, n: int) -> None:
        pass


class KeepsPgtableBytes(MmModel):
    """DELIBERATELY BROKEN: freeing a page table does not mm_dec_nr_ptes().

    check_mm's "non-zero pgtables_bytes on freeing mm".  Must trip mm.pgtable-bytes."""

    def mm_dec_nr_ptes(self, mm: int) -> None:
        pass


class LeaksGupPin(MmModel):
    """DELIBERATELY BROKEN: unpin_user_page() does not drop the reference GUP took.

    The page can never be freed; the sweep finds its _refcount above its
    mappings.  Must trip mm.page-refs."""

    def unpin_user_page(self, cpu, ref: int, gup_flags: int) -> None:
        pass


class UnpinsTwice(MmModel):
    """DELIBERATELY BROKEN: unpin_user_page() drops the reference twice (the caller's error path
    and its common exit both unpin).

    The page is freed while a PTE still maps it; the next load through that
    PTE reaches a freed page.  Must trip mm.pte-maps-freed-page."""

    def unpin_user_page(self, cpu, ref: int, gup_flags: int) -> None:
        super().unpin_user_page(cpu, ref, gup_flags)
        super().unpin_user_page(cpu, ref, gup_flags)


class ReusesSharedPage(MmModel):
    """DELIBERATELY BROKEN: do_wp_page() writes in place to a page fork shares.

    The reuse test is what keeps copy-on-write copy-on-write; without it
    the parent's write lands in the child's page.  Must trip mm.cow-write-shared."""

    def wp_can_reuse_anon_folio(self, ref: int) -> bool:
        return True


class ReusesByMapcount(MmModel):
    """DELIBERATELY BROKEN: do_wp_page() reuses a page its mapcount says is exclusive, as before
    09854ba94c6a.

    A page another mm GUP-pinned and then unmapped has one mapping left; the
    writer reuses it in place and the pin reads the writer's private data
    (CVE-2020-29374).  Must trip mm.pin-foreign-write."""

    def wp_can_reuse_anon_folio(self, ref: int) -> bool:
        return self.page_mem.load32(self._page_word(ref, "_mapcount")) == 0


class ForkSharesPinnedPages(MmModel):
    """DELIBERATELY BROKEN: fork shares a page the parent may have pinned (before 70e806e4e645,
    "mm: Do early cow for pinned pages during fork() for ptes").

    The parent's next write copies the page away from its own pin: the pin
    (an RDMA buffer) now belongs to the child.  Must trip mm.pin-diverged."""

    def folio_needs_cow_for_dma(self, ref: int) -> bool:
        return False


class ReusesByRefcountOnly(MmModel):
    """DELIBERATELY BROKEN: do_wp_page() decides reuse by the page count alone, PageAnonExclusive
    unread (the COW logic before 6c287605fd56 and its series).

    A R/O-mapped exclusive page that a driver pinned has a count of
    GUP_PIN_COUNTING_BIAS more: the process's own write copies it away from
    the pin.  Must trip mm.pin-diverged."""

    def wp_can_reuse(self, ref: int) -> bool:
        return self.wp_can_reuse_anon_folio(ref)


class PinsWithoutUnshare(MmModel):
    """DELIBERATELY BROKEN: a R/O FOLL_PIN pins an anon page fork shares, with no unshare fault
    (before a7f226604170, "mm/gup: trigger FAULT_FLAG_UNSHARE when R/O-pinning a possibly
    shared anonymous page").

    The pinning process's next write copies the shared page: the pin is left
    on the page the child maps.  Must trip mm.pin-diverged."""

    def gup_must_unshare(self, ref: int, gup_flags: int) -> bool:
        return False


class SkipsLastPte(MmModel):
    """DELIBERATELY BROKEN: zap_pte_range() stops one entry early (an off-by-one in its loop).

    The last page of the range stays mapped in a table no VMA covers any
    more.  Must trip mm.pte-in-no-vma (the sweep)."""

    def zap_pte_range(self, cpu, tlb: MmuGather, table: int, start: int, end: int) -> int:
        return super().zap_pte_range(cpu, tlb, table, start, end - 1)


class DropsGatherBatch(MmModel):
    """DELIBERATELY BROKEN: the pages zap gathered are never released after the flush.

    Nothing maps them and nothing frees them; the sweep finds pages no
    table, mapping or mm refers to.  Must trip pool.leak."""

    def free_pages_and_swap_cache(self, cpu, pages: list[int]) -> None:
        pass


class FlushNotNested(MmModel):
    """DELIBERATELY BROKEN: tlb_finish_mmu() flushes only what its own zap cleared.

    Two zaps of one range under mmap_lock for read (MADV_DONTNEED): the
    second finds the PTEs the first cleared and has not flushed yet, flushes
    nothing and returns, while a CPU still loads the old page through its
    TLB (99baac21e458, "mm: fix MADV_[FREE|DONTNEED] TLB flush miss
    problem").  Must trip tlb.stale."""

    def mm_tlb_flush_nested(self, mm: int) -> bool:
        return False


class SpfWalksWithIrqsOn(MmModel):
    """DELIBERATELY BROKEN: the speculative fault walks the page tables with interrupts on.

    Dufour's SPF walks with interrupts disabled because nothing else keeps
    the tables: it holds no mmap_lock, and a munmap's free_pgtables waits
    only for the IPI.  With interrupts on, the table it read from the pmd
    may be freed before it reads the PTE.  Must trip mm.walk-freed-table."""

    def spf_walk(self, cpu, vmf) -> int:
        return self._spf_walk(cpu, vmf)


class SkipsAnonVmaFork(MmModel):
    """DELIBERATELY BROKEN: anon_vma_fork() leaves the child's VMA without the parent's anon_vma.

    copy_page_range still shares the parent's anonymous pages with the child,
    which rmap then cannot reach through the child's VMA.  Must trip
    mm.fork-no-anon-vma."""

    def anon_vma_fork(self, cpu, dst_vma: int, src_vma: int) -> None:
        pass


class FreesTablesPastNeighbours(MmModel):
    """DELIBERATELY BROKEN: free_pgtables() frees every table the unmapped range touches,
    ignoring floor and ceiling.

    free_pgd_range() takes the neighbouring VMAs' limits precisely so that a
    table a neighbour still maps stays.  Must trip mm.free-mapped-table."""

    def free_pgtables(self, cpu, mm: int, start: int, end: int, floor: int, ceiling: int) -> None:
        span = self.geometry.pte
        low, high = start // span * span, -(-end // span) * span
        super().free_pgtables(cpu, mm, start, end, low, high)


__all__ = [
    "DropsGatherBatch",
    "FreesTablesPastNeighbours",
    "IgnoresSpecialPtes",
    "KeepsPgtableBytes",
    "LeaksGupPin",
    "LosesRssBatch",
    "ReusesByMapcount",
    "ReusesSharedPage",
    "SkipsAnonVmaFork",
    "SkipsLastPte",
    "SpfWalksWithIrqsOn",
    "UnpinsTwice",
]


class SwapinSkipsPteSame(MmModel):
    """DELIBERATELY BROKEN: do_swap_page() installs its page without checking that the PTE is
    still the swap entry it faulted on.

    Two threads fault one swapped-out page: the first swaps it in and frees
    the slot; the second reads the freed slot and maps a second page over the
    first (mm/memory.c do_swap_page: "if (unlikely(!pte_same(ptep_get(vmf->pte),
    vmf->orig_pte))) goto out_nomap").  Must trip mm.swap-freed."""

    def swapin_pte_same(self, off: int, orig: int) -> bool:
        return True


class ZapKeepsSwapSlot(MmModel):
    """DELIBERATELY BROKEN: zap_nonpresent_ptes() clears a swap entry without
    free_swap_and_cache().

    The slot stays taken with no entry naming it: swap space leaks until
    the device is full.  Must trip mm.swap-count."""

    def free_swap_and_cache(self, cpu, slot: int) -> None:
        pass


class MigratesWithoutFlush(MmModel):
    """DELIBERATELY BROKEN: migrate_vma_collect_pmd() does not flush after installing its
    migration entries.

    A CPU keeps its translation of the old page while it is copied and
    freed (mm/migrate_device.c: "Only flush the TLB if we actually modified
    any entries": flush_tlb_range).  Must trip tlb.stale."""

    def migrate_vma_flush(self, cpu, mm: int, start: int, end: int) -> None:
        pass


class LeavesFailedMigration(MmModel):
    """DELIBERATELY BROKEN: migrate_vma_finalize() unlocks a page that could not move (someone
    took a reference: -EAGAIN) and goes on to the next, leaving its migration entry.

    It must remove_migration_ptes(src, src) first; left behind, every fault
    on the entry finds the page unlocked and retries for ever, and the page
    is held by nothing that will release it.  Must trip mm.stuck-migration."""

    def migrate_vma_finalize_one(self, cpu, vmf, entry: int, old: int, new: int | None) -> bool:
        if new is None:
            self.folio_unlock(cpu, old)
            return False
        return super().migrate_vma_finalize_one(cpu, vmf, entry, old, new)


class CountsTablesAtRcuFree(BroadcastTlbiModel):
    """DELIBERATELY BROKEN: a page table leaves its mm's pgtable_bytes when the RCU callback frees
    it (through page->pt_mm), not when free_pgtables unhooks it.

    The process exits meanwhile: exit_mmap queues its tables and mmdrop
    frees the mm before the grace period ends, so the callback writes a
    freed mm_struct (the s390 seed on pte_free_defer: "what guarantees that
    mm has not been freed now?!").  Must trip mm.uaf."""

    def mm_dec_nr_ptes(self, mm: int) -> None:
        pass

    def free_table(self, cpu, table: int, lo: int | None) -> None:
        mmid = self.table_mm(table)
        if self.mm_check(cpu, mmid, "tlb_remove_table_rcu: mm_dec_nr_ptes(page->pt_mm)"):
            super().mm_dec_nr_ptes(mmid & 0xFF)
        super().free_table(cpu, table, lo)


class FindVmaUnchecked(MmModel):
    """DELIBERATELY BROKEN: the fault finds its VMA with find_vma() and does not check vm_start.

    find_vma() returns the first VMA that ends above the address, which may
    begin above it: a fault in a hole is served by the VMA above the hole and
    installs a PTE outside it (the kernel's many "use vma_lookup() instead of
    find_vma()" fixes).  Must trip mm.pte-outside-vma."""

    def vma_lookup(self, cpu, mm: int, vpn: int) -> int:
        return self.find_vma(cpu, mm, vpn)
