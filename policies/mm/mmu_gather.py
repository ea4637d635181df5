"""mm/mmu_gather.c: what a zap gathers, flushed and freed together.

Pages a zap clears are freed after the one TLB flush of the whole zap
(tlb_finish_mmu, or tlb_flush_mmu when the page batch fills); page tables
are freed only when no CPU can still be walking them: after the flush IPI,
which a CPU walking with interrupts off does not take
(tlb_remove_table_sync_one), or after an RCU grace period, which such a CPU
holds off (tlb_remove_table, MMU_GATHER_RCU_TABLE_FREE).  The model's
WARN_ON here: a table freed while it still maps something.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.mm.checks import FREE_MAPPED_TABLE
from policies.mm.pgtable import PMD_SITE, PTE_SITE, describe_entry
from policies.mm.rmap import ANON_SITE
from policies.mm.swap import Swap
from shm import GFP_NOWAIT, alloc_site, rcu_callback
from shm.pool import PFN_MASK

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


class Gather(Swap):
    """The mmu_gather: its range, page batch and table batch; the flush; the table frees."""

    gather_batch: int | None = None  # MAX_GATHER_BATCH: pages a gather holds before a zap must flush

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
