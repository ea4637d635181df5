"""mm/memory.c unmap_page_range and free_pgtables, mm/mmu_gather.c: zap, flush, free.

Pages a zap clears are gathered and freed after the one TLB flush of the
whole zap (tlb_finish_mmu); page tables are unhooked under page_table_lock and freed
only when no CPU can still be walking them: after the flush IPI, which a CPU
walking with interrupts off does not take (tlb_remove_table_sync_one), or
after an RCU grace period, which such a CPU holds off (tlb_remove_table,
MMU_GATHER_RCU_TABLE_FREE).  The model's WARN_ON here: a table freed while
it still maps something.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.mm.checks import FREE_MAPPED_TABLE
from policies.mm.pgtable import (
    FLAG_BITS,
    PMD_SITE,
    PTE_PRESENT,
    PTE_SITE,
    describe_entry,
    is_migration_entry,
    swp_offset,
)
from policies.mm.rmap import _REFCOUNT, ANON_SITE, GUP_PIN_COUNTING_BIAS
from policies.mm.swap import Swap
from shm import GFP_NOWAIT, alloc_site, rcu_callback
from shm.pool import PAGE_STRIDE, PFN_MASK

TABLE_BATCH_SITE = alloc_site("mm: mmu_gather table batch")


@dataclass
class MmuGather:
    """struct mmu_gather: one zap's cleared range, gathered pages and page tables, flushed and
    freed together."""

    mm: int
    fullmm: bool = False
    start: int = 1 << 62
    end: int = 0
    pages: list[int] = field(default_factory=list)
    tables: list[tuple[int, int]] = field(default_factory=list)  # pte_free_tlb(): (table, first vpn)
    freed_tables: bool = False  # the flush must drop the paging-structure caches of the range too
    batch: int = 0  # the page tlb_remove_table() keeps the tables' pointers in (GFP_NOWAIT), 0 if none
    force_break: int = -1  # zap_pte_range stopped here: the page batch is full, flush before going on

    def cleared(self, start: int, end: int) -> None:
        """tlb_remove_tlb_entry() of each PTE cleared in [start, end): the flush must cover them
        (__tlb_adjust_range)."""
        self.start = min(self.start, start)
        self.end = max(self.end, end)


def _tlb_remove_table_smp_sync(target: int, arg: object) -> None:
    """The IPI's function does nothing: that every CPU took it is the point."""


@rcu_callback("mm: tlb_remove_table_rcu")
def tlb_remove_table_rcu(cpu, arg: int) -> None:
    cpu.ctx.mm.free_table(cpu, arg >> 1, -1 if arg & 1 else None)


class Zap(Swap):
    """zap_page_range, the mmu_gather's page batch, free_pgtables and the table frees."""

    def remove_tables(self, cpu, mm: int, floor: int, ceiling: int, tables: list[tuple[int, int]]) -> None:
        """Free the page tables free_pgtables unhooked, as the mechanism does (its remove_tables:
        tlb_remove_table by RCU, ...), by default tlb_remove_table_sync_one."""
        if self._remove_tables is None:
            self.tlb_remove_table_sync_one(cpu, mm, floor, ceiling, tables)
        else:
            self._remove_tables(cpu, mm, floor, ceiling, tables)

    def tlb_gather_mmu(self, cpu, mm: int, fullmm: bool = False) -> MmuGather:
        """tlb_gather_mmu(): start a zap of mm; inc_tlb_flush_pending() says a flush is owed."""
        self.mm_mem.fetch_add32(self.mm_off(mm, "tlb_flush_pending"), 1)
        tlb = MmuGather(mm, fullmm)
        if fullmm:
            tlb.start, tlb.end = 0, self.geometry.pages
        return tlb

    gather_batch: int | None = None  # MAX_GATHER_BATCH: pages a gather holds before a zap must flush

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

    def pte_free_tlb(self, cpu, tlb: MmuGather, table: int, vpn: int) -> None:
        """pte_free_tlb(): the table is freed after the gather's flush of its range; with
        MMU_GATHER_RCU_TABLE_FREE (which PT_RECLAIM selects), after a grace period as well
        (tlb_remove_table).  The flush drops the CPUs' cached pmd entries of its range as well
        (freed_tables).  The tables wait in a batch page allocated GFP_NOWAIT; when there is
        none, the table is flushed and freed on its own (tlb_remove_table_one)."""
        lo = vpn - vpn % self.geometry.pte
        tlb.cleared(lo, lo + self.geometry.pte)
        tlb.freed_tables = True
        if not tlb.batch:
            batch = self.pool.alloc_page(cpu, GFP_NOWAIT, TABLE_BATCH_SITE)
            if batch is None:
                self.count("table_batch_failed")
                self.tlb_flush(cpu, tlb)  # tlb_table_invalidate()
                self.tlb_remove_table_one(cpu, tlb.mm, table, lo)
                return
            tlb.batch = batch
        tlb.tables.append((table, lo))

    def tlb_remove_table_one(self, cpu, mm: int, table: int, lo: int) -> None:
        """__tlb_remove_table_one(), no batch page: tlb_remove_table_sync_one()'s IPI, then the
        table freed at once ("semi RCU"); a CPU walking with interrupts off holds the IPI."""
        if self.broadcast_tlbi:
            cpu.smp_call_function_many(range(self.ncpus), _tlb_remove_table_smp_sync)
        self.free_table(cpu, table, lo)

    def tlb_flush(self, cpu, tlb: MmuGather) -> None:
        """tlb_flush(): the architecture's flush of what the gather cleared; of the paging-structure
        caches too if it freed page tables (x86: flush_tlb_mm_range's freed_tables; arm64:
        last_level = !tlb->freed_tables)."""
        self.flush_tlb_mm_range(cpu, tlb.mm, tlb.start, tlb.end, tlb.freed_tables)

    def tlb_flush_mmu(self, cpu, tlb: MmuGather) -> None:
        """tlb_flush_mmu(): flush what the gather cleared, then free its tables (tlb_table_flush:
        after a grace period) and its pages; the gather goes on, empty."""
        if tlb.end > tlb.start:
            self.tlb_flush(cpu, tlb)
        self.tlb_table_flush(cpu, tlb)
        self.free_pages_and_swap_cache(cpu, tlb.pages)
        tlb.pages = []
        tlb.start, tlb.end, tlb.freed_tables = 1 << 62, 0, False

    def tlb_table_flush(self, cpu, tlb: MmuGather) -> None:
        """tlb_table_flush(): the gathered tables and their batch page go; the gather goes on."""
        if tlb.tables:
            self.tlb_remove_table_free(cpu, tlb)
            tlb.tables = []
        if tlb.batch:  # the kernel frees it with its tables after the grace period; nothing reads it here
            self.pool.free_page(cpu, tlb.batch, TABLE_BATCH_SITE)
            tlb.batch = 0

    def tlb_remove_table_free(self, cpu, tlb: MmuGather) -> None:
        """tlb_remove_table_free(): the batch's tables freed by RCU (tlb_remove_table_rcu): a walker
        that read a pmd before the flush is an RCU reader, or has interrupts off, still."""
        rcu = self.machine.rcu
        for table, _ in tlb.tables:
            rcu.call(cpu, tlb_remove_table_rcu, table << 1)
            self.count("tables_rcu_freed")

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

    def mm_tlb_flush_nested(self, mm: int) -> bool:
        """mm_tlb_flush_nested(): another zap of this mm has cleared PTEs it has not flushed yet."""
        return self.mm_mem.load32(self.mm_off(mm, "tlb_flush_pending")) > 1

    def tlb_finish_mmu(self, cpu, tlb: MmuGather) -> None:
        """tlb_finish_mmu(): flush what the zap cleared, then free the pages it gathered.

        A zap that found nothing to clear flushes nothing, but if another zap
        of the mm is in flight, the PTEs this one found empty may be ones that
        zap cleared and has not flushed: then the whole mm is flushed, or the
        call would return while another CPU still reaches the old pages
        (99baac21e458, "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem")."""
        mm = tlb.mm
        self.flush_upto = self.tlb_epoch()
        if self.mm_tlb_flush_nested(mm):
            tlb.start, tlb.end, tlb.freed_tables = 0, self.geometry.pages, True  # another zap may free tables
            self.count("tlb_flush_nested")
        if tlb.end > tlb.start:
            self.tlb_flush(cpu, tlb)
        self.tlb_table_flush(cpu, tlb)
        self.free_pages_and_swap_cache(cpu, tlb.pages)
        self.mm_mem.fetch_sub32(self.mm_off(mm, "tlb_flush_pending"), 1)

    def free_pages_and_swap_cache(self, cpu, pages: list[int]) -> None:
        """The mmu_gather's batch released (tlb_batch_pages_flush): release_pages."""
        self.pool.release_pages(cpu, pages, ANON_SITE)

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

    def tlb_remove_table_sync_one(self, cpu, mm: int, floor: int, ceiling: int, tables: list[tuple[int, int]]) -> None:
        """tlb_remove_table_one(): the flush, then an IPI every CPU must take, then free at once.

        Where the flush is itself an IPI (x86 without a hypervisor) it already
        waited for the CPUs walking with interrupts off; after a broadcast
        TLBI, tlb_remove_table_sync_one() sends the IPI that does."""
        self.flush_tlb_mm_range(cpu, mm, floor, ceiling, freed_tables=True)
        if self.broadcast_tlbi:
            cpu.smp_call_function_many(range(self.ncpus), _tlb_remove_table_smp_sync)
        self.pte_free(cpu, mm, tables)

    def tlb_remove_table(self, cpu, mm: int, floor: int, ceiling: int, tables: list[tuple[int, int]]) -> None:
        """MMU_GATHER_RCU_TABLE_FREE: the flush, then each table freed after an RCU grace period
        (tlb_table_flush, tlb_remove_table_rcu).

        A CPU walking with interrupts off is an RCU reader, so the grace period
        waits for fast GUP even where the flush does not interrupt anyone."""
        self.flush_tlb_mm_range(cpu, mm, floor, ceiling, freed_tables=True)
        rcu = self.machine.rcu
        for table, lo in tables:
            rcu.call(cpu, tlb_remove_table_rcu, table << 1 | (lo < 0))
            self.count("tables_rcu_freed")

    def pte_free(self, cpu, mm: int, tables: list[tuple[int, int]]) -> None:
        for table, lo in tables:
            self.free_table(cpu, table, lo)

    def free_table(self, cpu, table: int, lo: int | None) -> None:
        """Free one unhooked table: a PTE table if lo (its first vpn; None if not known), else a pmd."""
        pte_level = lo is None or lo >= 0
        entries = self.pool.data.view("<i8")[table & PFN_MASK, : self.geometry.pte if pte_level else self.geometry.pmd]
        mapped = np.flatnonzero(entries)  # pte_free_debug's look at every entry, in one read
        if len(mapped):
            k = int(mapped[0])
            where = f"pmd entry {k}" if not pte_level else f"vpn {lo + k}" if lo is not None else f"entry {k}"
            cpu.report(
                FREE_MAPPED_TABLE,
                f"freeing a page table that still maps {where}: {describe_entry(int(entries[k]))}",
                mm=self.table_mm(table) & 0xFF,
            )
        self.count("tables_freed")
        self.pte_free_one(cpu, table, PTE_SITE if pte_level else PMD_SITE)

    def mm_dec_nr_ptes(self, mm: int) -> None:
        """mm_dec_nr_ptes(): the mm holds one table less (pgtable_bytes, which check_mm verifies)."""
        self.mm_mem.fetch_sub64(self.mm_off(mm, "pgtable_bytes"), self.page_size)
