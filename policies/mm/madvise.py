"""mm/madvise.c: MADV_DONTNEED and MADV_PAGEOUT, under mmap_lock for read beside faults.

jemalloc-like allocators give memory back with MADV_DONTNEED without
unmapping it; the pte_ref seed's workload.  Each VMA's part is zapped into
its own mmu_gather (zap_page_range_single), so its pages are flushed and
freed once, after the ptls were dropped, and not per table.

MADV_PAGEOUT reclaims a range's exclusive anonymous pages to swap: each PTE
becomes a swap entry, which faults, fork, zap and the sweep then meet.
"""

from __future__ import annotations

from policies.mm.pgtable import PTE_PRESENT, SWP_SWAPFILE, swp_entry
from policies.mm.rmap import ANON_SITE
from policies.mm.zap import Zap


class Madvise(Zap):
    """madvise(2)'s advice that changes the page tables."""

    def madvise_dontneed(self, cpu, mm: int, start: int, end: int) -> None:
        """madvise(MADV_DONTNEED) of [start, end) (madvise_dontneed_single_vma): each VMA's part
        zapped, flushed and freed, and the tables it empties may go (zap_details.reclaim_pt);
        when it returns, no CPU may hold a translation of those parts.  A hole is -ENOMEM and
        promises nothing: a munmap may be tearing it down right now."""
        self._zap_under_read_lock(cpu, mm, start, end, reclaim_pt=True)

    def madvise_free(self, cpu, mm: int, start: int, end: int) -> None:
        """A MADV_FREE-like zap of [start, end): the pages go, the tables stay (only MADV_DONTNEED
        asks for reclaim_pt).  The kernel's MADV_FREE marks pages lazily freed and reclaim
        takes them later; the model zaps at once, which is what the tables see."""
        self._zap_under_read_lock(cpu, mm, start, end, reclaim_pt=False)

    def _zap_under_read_lock(self, cpu, mm: int, start: int, end: int, reclaim_pt: bool) -> None:
        since = self.tlb_call_begin()
        lock = self.mmap_lock(mm)
        lock.down_read(cpu)
        done: list[tuple[int, int]] = []
        try:
            for s, e, _ in self.index_parts(mm, start, end):
                self.zap_page_range_single(cpu, mm, s, e, reclaim_pt=reclaim_pt)
                done.append((s, e))
        finally:
            lock.up_read(cpu)
        for s, e in done:
            self.tlb_promise(cpu, mm, s, e, since=since)

    def zap_page_range_single(self, cpu, mm: int, start: int, end: int, reclaim_pt: bool = False) -> None:
        """zap_page_range_single(): one VMA's range, with its own mmu_gather; MADV_DONTNEED's
        (reclaim_pt) may free the tables it empties (mm/pt_reclaim.c)."""
        tlb = self.tlb_gather_mmu(cpu, mm)
        self.zap_page_range(cpu, tlb, start, end, reclaim_pt=reclaim_pt)
        self.tlb_finish_mmu(cpu, tlb)

    def madvise_pageout(self, cpu, mm: int, start: int, end: int) -> int:
        """madvise(MADV_PAGEOUT) of [start, end): each VMA's exclusive pages swapped out
        (madvise_cold_or_pageout_pte_range, then reclaim); how many."""
        lock = self.mmap_lock(mm)
        lock.down_read(cpu)
        out = 0
        try:
            for s, e, _ in self.index_parts(mm, start, end, per_table=True):
                out += self._pageout_table(cpu, mm, s, e)
        finally:
            lock.up_read(cpu)
        return out

    def _pageout_table(self, cpu, mm: int, start: int, end: int) -> int:
        table, ptl = self.pte_tryget_map_lock(cpu, mm, start)
        if not table:
            return 0
        out = 0
        for v in range(start, end):
            off = self.table_off(table, v % self.geometry.pte)
            pte = self.page_mem.load64(off)
            ref = self.vm_normal_page(pte) if pte & PTE_PRESENT else 0
            if not ref or self.page_mem.load32(self._page_word(ref, "_mapcount")) != 0:
                continue
            if self.page_mem.load32(self._page_word(ref, "_refcount")) != 1:
                continue
            slot = self.get_swap_page(cpu)
            if slot < 0:
                break
            if not self.try_to_unmap_one(cpu, mm, v, off, ref, slot):
                self.swap_free(cpu, slot)
                continue
            out += 1
        ptl.unlock(cpu)
        self.pte_put(cpu, mm, table, start)
        return out

    def try_to_unmap_one(self, cpu, mm: int, vpn: int, off: int, ref: int, slot: int) -> bool:
        """try_to_unmap_one() and pageout() of an exclusive page, under the ptl: clear and flush
        the PTE (ptep_clear_flush), write the page to its slot, leave a swap entry, free it.
        The page is written after the flush: no CPU can write it through its TLB any more.

        A fast GUP pin may have landed since the page's count was read: after
        the flush, folio_try_share_anon_rmap_pte gives up a page that may be
        pinned and puts its PTE back (False); a pin after that sees the PTE
        gone when it rechecks."""
        epoch = self.tlb_retire(mm, vpn)
        pte = self.page_mem.load64(off)
        self.page_mem.store64(off, 0)
        self.flush_tlb_mm_range(cpu, mm, vpn, vpn + 1)
        self.tlb_promise(cpu, mm, vpn, vpn + 1, epoch)
        if not self.folio_try_share_anon_rmap(ref):
            self.page_mem.store64(off, pte)
            self.count("pageout_pinned")
            return False
        self.swap_writepage(cpu, slot, ref)
        self.page_mem.store64(off, swp_entry(SWP_SWAPFILE, slot))
        self.page_remove_rmap(cpu, ref)
        self.add_rss(mm, -1)
        self.mm_mem.fetch_add64(self.mm_off(mm, "swapents"), 1)
        self.pool.put_page(cpu, ref, ANON_SITE)
        self.count("pages_swapped_out")
        return True
