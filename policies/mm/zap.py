"""mm/memory.c unmap_page_range and free_pgtables: zap, and unhook the tables.

A zap clears PTEs under each table's ptl into an mmu_gather (mmu_gather.py),
which flushes once and frees the pages after; free_pgtables unhooks the
tables of an unmapped range under page_table_lock and hands them to the
mechanism's remove_tables.  pt_reclaim's hooks (mm/pt_reclaim.c) sit in
zap_pte_range's frame, as the kernel's stubs when PT_RECLAIM is off.
"""

from __future__ import annotations

from policies.mm.mmu_gather import Gather, MmuGather
from policies.mm.pgtable import (
    FLAG_BITS,
    PTE_PRESENT,
    is_migration_entry,
    swp_offset,
)
from policies.mm.rmap import _REFCOUNT, GUP_PIN_COUNTING_BIAS
from shm.pool import PAGE_STRIDE, PFN_MASK


class Zap(Gather):
    """zap_page_range, zap_pte_range and free_pgtables."""

    def zap_page_range(
        self,
        cpu,
        tlb: MmuGather,
        start: int,
        end: int,
        vmas: tuple[int, ...] | list[int] = (),
        reclaim_pt: bool = False,
    ) -> None:
        """unmap_page_range() over [start, end): zap_pte_range() table by table, into `tlb`.

        Nothing is flushed here unless the gather's page batch fills:
        tlb_finish_mmu() flushes what was cleared and then frees the pages,
        after every ptl was dropped; meanwhile a fault may install a new page
        where another CPU still loads the old one through its TLB, which the
        kernel allows until the call returns.  `vmas` are the VMAs going
        away: each table the zap has passed is marked on them before its ptl
        is released (vma_mark_zapped).  `reclaim_pt`: MADV_DONTNEED's zap,
        whose emptied tables pt_reclaim may free (zap_details.reclaim_pt)."""
        g = self.geometry
        vpn = start
        while vpn < end:
            stop = min(end, (vpn // g.pte + 1) * g.pte)
            self.zap_table(cpu, tlb, vpn, stop, vmas, self.reclaim_pt_is_enabled(vpn, stop, reclaim_pt))
            vpn = stop
            if vpn < end:
                cpu.window("zap_pte_range:next-table")

    def zap_table(
        self, cpu, tlb: MmuGather, start: int, end: int, vmas: tuple[int, ...] | list[int], can_reclaim_pt: bool
    ) -> None:
        """zap_pte_range()'s frame for [start, end) of one table: zap under the ptl; when the page
        batch fills (force_flush, force_break), drop the ptl, flush and free the batch
        (tlb_flush_mmu) and zap the rest under the ptl again.  With pt_reclaim, a table zapped
        whole under one hold of the ptl is unhooked there if the pmd lock is free
        (try_get_and_clear_pmd) and freed through the gather (free_pte); otherwise it is
        checked for emptiness again under both locks (try_to_free_pte): after the ptl was
        dropped midway, a fault may have refilled what was zapped before ("mm: pgtable: fix
        incorrect reclaim of non-empty PTE pages", 2025)."""
        mm = tlb.mm
        addr, direct_reclaim, pmdval = start, True, 0
        held, ptl = self.pte_tryget_map_lock(cpu, mm, addr)  # zap_pmd_range's pte_try_get, with pte_ref
        table = held
        while table:
            tlb.force_break = -1
            cleared = self.zap_pte_range(cpu, tlb, table, addr, end)
            if tlb.force_break < 0:
                if can_reclaim_pt and direct_reclaim:
                    pmdval = self.try_get_and_clear_pmd(cpu, mm, start, table)
                    direct_reclaim = bool(pmdval)
                break
            direct_reclaim = self.can_direct_reclaim(ptl_dropped=True)
            addr = tlb.force_break
            ptl.unlock(cpu)
            self.pte_put_many(cpu, mm, table, addr, cleared)
            self.tlb_flush_mmu(cpu, tlb)
            table, ptl = self.pte_offset_map_lock(cpu, mm, addr)
        for v in vmas:
            self.vma_mark_zapped(v, start, end)
        if table:
            ptl.unlock(cpu)
            self.pte_put_many(cpu, mm, table, addr, cleared)
            if can_reclaim_pt:
                if direct_reclaim:
                    self.free_pte(cpu, tlb, start, pmdval)
                else:
                    self.try_to_free_pte(cpu, tlb, start)
        # else no table, or it went while the ptl was dropped: nothing to reclaim
        if held:
            self.pte_put(cpu, mm, held, start)

    def can_direct_reclaim(self, ptl_dropped: bool) -> bool:
        """zap_pte_range's direct_reclaim: the fast path only for a table zapped under one hold
        of its ptl; once the ptl was dropped midway, entries zapped before may have been
        refilled (the 2025 fix; before it, the last hold's zap was enough)."""
        return not ptl_dropped

    # -- pt_reclaim's hooks: CONFIG_PT_RECLAIM off (include/linux/mm.h's stubs) ----------------

    def reclaim_pt_is_enabled(self, start: int, end: int, reclaim_pt: bool) -> bool:
        """mm/pt_reclaim.c reclaim_pt_is_enabled(): a MADV_DONTNEED zap of a whole table."""
        return False

    def try_get_and_clear_pmd(self, cpu, mm: int, vpn: int, table: int) -> int:
        """Under the ptl: unhook the zapped table if the pmd lock is free; the pmd entry, or 0."""
        return 0

    def free_pte(self, cpu, tlb: MmuGather, vpn: int, pmdval: int) -> None:
        """The unhooked table into the gather (pte_free_tlb) and out of the mm (mm_dec_nr_ptes)."""

    def try_to_free_pte(self, cpu, tlb: MmuGather, vpn: int) -> None:
        """Unhook and free vpn's table if it is empty under the pmd lock and its ptl."""

    def zap_pte_range(self, cpu, tlb: MmuGather, table: int, start: int, end: int) -> int:
        """zap_pte_range()'s loop (do_zap_pte_range): under the table's ptl, clear [start, end) and
        gather the pages; how many entries it cleared, present or not (the pte_ref seed's
        nr_put).  When the gather's batch is full it stops after that entry and says where
        (tlb.force_break)."""
        zapped = rss = zero = swapped = 0
        first = last = -1
        page_mem, mm, pages = self.page_mem, tlb.mm, tlb.pages
        base = self.table_off(table, 0) - 8 * (start - start % self.geometry.pte)
        refcount0 = self.page0 + _REFCOUNT
        batch = self.gather_batch
        for v in range(start, end):
            off = base + 8 * v
            pte = page_mem.load64(off)
            if not pte:
                continue
            if not pte & PTE_PRESENT:
                rss -= self.zap_nonpresent_pte(cpu, mm, v, off, pte)
                swapped += 1
                continue
            self.tlb_retire(mm, v)
            page_mem.store64(off, 0)
            if first < 0:
                first = v
            last = v
            zapped += 1
            ref = self.vm_normal_page(pte)
            if not ref:
                zero += 1
                continue
            if page_mem.load32(refcount0 + (ref & PFN_MASK) * PAGE_STRIDE) >= GUP_PIN_COUNTING_BIAS:
                self.note_pinned_unmap(mm, v)  # folio_maybe_dma_pinned
            self.page_remove_rmap(cpu, ref)
            rss -= 1
            pages.append(ref)
            if batch is not None and len(pages) >= batch and v + 1 < end:
                tlb.force_break = v + 1
                break
        if zapped:
            tlb.cleared(first, last + 1)
        self.add_mm_rss_vec(mm, rss)
        self.count("ptes_zapped", zapped)
        if zero:
            self.count("zero_pages_zapped", zero)
        return zapped + swapped

    def zap_nonpresent_pte(self, cpu, mm: int, vpn: int, off: int, pte: int) -> int:
        """zap_nonpresent_ptes(): clear a swap or migration entry (no TLB holds it); the RSS it
        counted.  A swap entry gives its slot back; a migration entry's page stays with the
        migration, whose remove_migration_ptes will find the entry gone."""
        self.page_mem.store64(off, 0)
        self.count("swap_entries_zapped")
        if is_migration_entry(pte):
            self.check_migration_entry(cpu, mm, vpn, pte)
            if self.folio_maybe_dma_pinned(swp_offset(pte)):
                self.note_pinned_unmap(mm, vpn)  # a pin taken as the entry went in: it gives up
            return 1
        self.free_swap_and_cache(cpu, swp_offset(pte))
        self.mm_mem.fetch_sub64(self.mm_off(mm, "swapents"), 1)
        return 0

    def free_pgtables(self, cpu, mm: int, start: int, end: int, floor: int, ceiling: int) -> None:
        """free_pgtables() of the unmapped [start, end): free the tables whose whole span lies in
        [floor, ceiling), the gap between the neighbouring VMAs (free_pgd_range's limits: a
        table a neighbour still uses stays).

        Each is unhooked under page_table_lock and subtracted from the mm
        (free_pte_range: mm_dec_nr_ptes); then the mechanism's remove_tables frees them, by
        default tlb_remove_table_sync_one: after the flush and an IPI that
        waits for every CPU walking with interrupts off (fast GUP)."""
        g = self.geometry
        lock = self.page_table_lock(mm)
        pgd = self.mm_mem.load64(self.mm_off(mm, "pgd"))
        if not pgd or floor >= ceiling:
            return
        unhooked: list[tuple[int, int]] = []
        for gi in range(floor // g.pmd_span, (ceiling - 1) // g.pmd_span + 1):
            pe = self.read_entry(cpu, pgd, gi, "free_pgtables")
            if not pe & PTE_PRESENT:
                continue
            pmd = pe >> FLAG_BITS
            base = gi * g.pmd_span
            for mi in range(g.pmd):
                lo = base + mi * g.pte
                if lo < floor or lo + g.pte > ceiling:
                    if lo < end and lo + g.pte > start:
                        self.count("shared_tables_kept")
                    continue
                lock.lock(cpu)
                off = self.table_off(pmd, mi)
                e = self.page_mem.load64(off)
                if e & PTE_PRESENT:
                    self.page_mem.store64(off, 0)
                    self.mm_dec_nr_ptes(mm)
                    unhooked.append((e >> FLAG_BITS, lo))
                lock.unlock(cpu)
            if base >= floor and base + g.pmd_span <= ceiling:
                lock.lock(cpu)
                if not any(self.page_mem.load64(self.table_off(pmd, k)) for k in range(g.pmd)):
                    self.page_mem.store64(self.table_off(pgd, gi), 0)
                    self.mm_dec_nr_ptes(mm)
                    unhooked.append((pmd, -1))
                lock.unlock(cpu)
        if unhooked:
            cpu.window("free_pgtables:unhooked")
            self.remove_tables(cpu, mm, floor, ceiling, unhooked)

    def mm_dec_nr_ptes(self, mm: int) -> None:
        """mm_dec_nr_ptes(): the mm holds one table less (pgtable_bytes, which check_mm verifies)."""
        self.mm_mem.fetch_sub64(self.mm_off(mm, "pgtable_bytes"), self.page_size)
