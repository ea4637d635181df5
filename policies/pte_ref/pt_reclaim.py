"""pt_reclaim: what upstream merged instead of pte_ref (6375e95f381e "mm: pgtable: reclaim empty
PTE page in madvise(MADV_DONTNEED)", 6.14; mm/pt_reclaim.c).

No reference count: a MADV_DONTNEED zap that emptied a whole table frees it.
Under the ptl, right after zapping the table whole, try_get_and_clear_pmd()
takes the pmd lock by trylock (the lock order elsewhere is pmd lock, then
ptl) and unhooks the table; if the pmd lock is busy, or the ptl was dropped
midway (the gather's batch filled), try_to_free_pte() takes the pmd lock and
then the ptl and unhooks the table only if every entry is still none.  The
table goes through the mmu_gather (free_pte: pte_free_tlb), freed after the
flush and an RCU grace period (PT_RECLAIM selects MMU_GATHER_RCU_TABLE_FREE).
What makes that safe for everyone else holding mmap_lock for read: walkers
and faults map a table with pte_offset_map_lock(), which reads the pmd under
RCU and checks it again under the ptl (0d940a9b270b, 6.5); fast GUP walks
with interrupts off, an RCU reader.

Its mutants: the fast path after the ptl was dropped midway (before "mm:
pgtable: fix incorrect reclaim of non-empty PTE pages", 2025), a fast path
that leaves the pmd mapping the table it frees, tables freed after the
flush IPI instead of a grace period (all of them, or only those freed
one at a time when the gather has no batch page), a pte_offset_map_lock without the
pmd recheck under the ptl, the ptl freed at the unhook instead of with
the table, and a flush that leaves the MMUs' cached pmd entries.
"""

from __future__ import annotations

from dataclasses import replace

from policies.mm import MmModel
from policies.mm.checks import FREE_MAPPED_TABLE, MAPS_FREED_TABLE, WALK_FREED_TABLE
from policies.mm.mmu_gather import Gather, MmuGather, tlb_remove_table_rcu
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT
from policies.mm.ptlock import SplitPtlocks
from policies.scenario import mutant
from policies.vma_lookup.mmap_lock import mmap_lock, tlb_remove_table
from shm.checks import SLAB_UAF


class PtReclaimModel(SplitPtlocks, MmModel):
    """The model with CONFIG_PT_RECLAIM: mm/pt_reclaim.c's functions, zap_pte_range's use of them;
    its ptls allocated beside the tables (ALLOC_SPLIT_PTLOCKS, a lockdep kernel's), freed with
    the table after the grace period.

    The gather's page batch holds half a table (MAX_GATHER_BATCH against
    PTRS_PER_PTE: in the kernel about 500 pages against 512 entries, so a
    table mapped full fills it), so that a zap drops the ptl midway
    through a full table, as force_flush makes the kernel's do."""

    gather_batch = 4

    def reclaim_pt_is_enabled(self, start: int, end: int, reclaim_pt: bool) -> bool:
        """reclaim_pt_is_enabled(): MADV_DONTNEED's zap (details->reclaim_pt) of a whole table."""
        return reclaim_pt and end - start >= self.geometry.pte

    def try_get_and_clear_pmd(self, cpu, mm: int, vpn: int, table: int) -> int:
        """try_get_and_clear_pmd(): under the table's ptl, take the pmd lock if it is free and
        clear the pmd; the pmd entry (pmdval), or 0 if the lock was busy."""
        pmd, i = self.walk_pmd(cpu, mm, vpn, "try_get_and_clear_pmd")
        pml = self.page_table_lock(mm)
        if not pml.trylock(cpu):
            self.count("reclaim_pml_busy")
            return 0
        off = self.table_off(pmd, i)
        pmdval = self.page_mem.load64(off)
        self.page_mem.store64(off, 0)
        pml.unlock(cpu)
        return pmdval

    def try_to_free_pte(self, cpu, tlb: MmuGather, vpn: int) -> None:
        """try_to_free_pte(): the pmd lock, then the table's ptl (pte_offset_map_rw_nolock: no
        recheck needed with the pmd lock held); every entry must still be none; then the pmd
        is cleared and the table freed through the gather."""
        mm = tlb.mm
        pmd, i = self.walk_pmd(cpu, mm, vpn, "try_to_free_pte")
        if not pmd:
            return
        pml = self.page_table_lock(mm)
        pml.lock(cpu)
        off = self.table_off(pmd, i)
        pmdval = self.page_mem.load64(off)
        if not pmdval & PTE_PRESENT:
            pml.unlock(cpu)
            return
        table = pmdval >> FLAG_BITS
        ptl = self.pte_lockptr(cpu, table)
        ptl.lock(cpu)
        full = any(self.read_entry(cpu, table, k, "try_to_free_pte") for k in range(self.geometry.pte))
        if not full:
            self.page_mem.store64(off, 0)
        ptl.unlock(cpu)
        pml.unlock(cpu)
        if full:
            self.count("reclaim_refilled")
            return
        self.count("reclaim_slow")
        self.free_pte(cpu, tlb, vpn, pmdval)

    def tlb_remove_table_one(self, cpu, mm: int, table: int, lo: int) -> None:
        """__tlb_remove_table_one() with PT_RECLAIM (arch/x86/include/asm/tlb.h,
        __tlb_remove_table_one_rcu): with no batch page, the one table still waits for a grace
        period, since pte_offset_map_lock's walkers are RCU readers with interrupts on."""
        self.machine.rcu.call(cpu, tlb_remove_table_rcu, table << 1)
        self.count("tables_rcu_freed")

    def free_pte(self, cpu, tlb: MmuGather, vpn: int, pmdval: int) -> None:
        """free_pte(): the unhooked table into the gather (pte_free_tlb), out of the mm."""
        self.pte_free_tlb(cpu, tlb, pmdval >> FLAG_BITS, vpn)
        self.mm_dec_nr_ptes(tlb.mm)
        self.count("tables_reclaimed")


pt_reclaim = replace(
    mmap_lock,
    name="pt_reclaim",
    doc="MADV_DONTNEED frees the tables it empties: pmd unhooked under the pmd lock and ptl, freed by RCU",
    model=PtReclaimModel,
    remove_tables=tlb_remove_table,  # PT_RECLAIM selects MMU_GATHER_RCU_TABLE_FREE: free_pgtables' too
)


class ReclaimsRefilledTable(PtReclaimModel):
    """DELIBERATELY BROKEN: the fast path after the ptl was dropped midway (6375e95f381e as merged):
    the last hold of the ptl zapped only the table's tail, and what was zapped before may
    have been refilled by a fault in between; the table is unhooked and freed with it."""

    def can_direct_reclaim(self, ptl_dropped: bool) -> bool:
        return True


class ReclaimWithoutPmdClear(PtReclaimModel):
    """DELIBERATELY BROKEN (made up, not an upstream bug): try_get_and_clear_pmd() takes the pmd
    entry but leaves it in place: the table is freed after the grace period while the pmd still
    maps it.  What proves the sweep's look at every pmd entry."""

    def try_get_and_clear_pmd(self, cpu, mm: int, vpn: int, table: int) -> int:
        pmd, i = self.walk_pmd(cpu, mm, vpn, "try_get_and_clear_pmd")
        pml = self.page_table_lock(mm)
        if not pml.trylock(cpu):
            return 0
        pmdval = self.page_mem.load64(self.table_off(pmd, i))
        pml.unlock(cpu)
        return pmdval


class TablesFreedAfterIpi(PtReclaimModel):
    """DELIBERATELY BROKEN: the gathered tables freed after the flush IPI, not a grace period (x86's
    "semi RCU" before the pt_reclaim series: tlb_remove_table_sync_one, then free).  The IPI
    waits for CPUs with interrupts off, not for pte_offset_map_lock's RCU reader, who read the
    pmd before the unhook and now takes the ptl of a freed table: the table is freed under it
    (mm.walk-freed-table), or first the ptl beside it (slab.uaf)."""

    def tlb_remove_table_free(self, cpu, tlb: MmuGather) -> None:
        self.pte_free(cpu, tlb.mm, tlb.tables)  # the flush just before was the IPI


class FallbackFreedAfterIpi(PtReclaimModel):
    """DELIBERATELY BROKEN: when the gather gets no batch page (GFP_NOWAIT failed), the table is
    freed after tlb_remove_table_sync_one's IPI, the generic __tlb_remove_table_one, not by RCU
    as x86 does with PT_RECLAIM: the walker that read the pmd under RCU takes the IPI and finds
    the table (or its ptl) freed.  Reached only when an allocation fails."""

    def tlb_remove_table_one(self, cpu, mm: int, table: int, lo: int) -> None:
        Gather.tlb_remove_table_one(self, cpu, mm, table, lo)


class MapLockWithoutRecheck(PtReclaimModel):
    """DELIBERATELY BROKEN: pte_offset_map_lock() without its pmd_same() under the ptl (6.5's,
    RCU section and all, less the recheck): a table pt_reclaim unhooked between the pmd read
    and the spin_lock is locked and written to."""

    def pmd_same(self, pmdval: int, off: int) -> bool:
        return True


class PtlockFreedWithTable(PtReclaimModel):
    """DELIBERATELY BROKEN: the ptl freed when the table is unhooked (pagetable_pte_dtor in
    ___pte_free_tlb), not with the table after the grace period: a walker that read the pmd
    under RCU before the unhook takes a freed lock (syzbot's report; fixed by "mm: pgtable:
    make ptlock be freed by RCU")."""

    def pte_free_tlb(self, cpu, tlb: MmuGather, table: int, vpn: int) -> None:
        super().ptlock_free(cpu, table)
        super().pte_free_tlb(cpu, tlb, table, vpn)

    def ptlock_free(self, cpu, table: int) -> None:
        ref = self.page_mem.load64(self._ptl_off(table))
        if self.ptlock_cache.alive(ref):  # not freed at the unhook already (free_pgtables' tables)
            super().ptlock_free(cpu, table)


class FlushLeafOnly(PtReclaimModel):
    """DELIBERATELY BROKEN: the gather's flush invalidates leaf entries only (arm64's TLBI VALE1IS,
    last_level set whatever freed_tables says), so a CPU's cached pmd entry outlives the table
    pt_reclaim freed, and its MMU walks the freed table: the shape of c2ff4764e03e ("arm64: tlb:
    Flush walk cache when unsharing PMD tables"), where unshared_tables was left out of the test."""

    def tlb_flush(self, cpu, tlb: MmuGather) -> None:
        self.flush_tlb_mm_range(cpu, tlb.mm, tlb.start, tlb.end)


MUTANTS = (
    mutant(
        pt_reclaim,
        "reclaim_refilled_table",
        FREE_MAPPED_TABLE,
        "mm: pgtable: fix incorrect reclaim of non-empty PTE pages (Qi Zheng, 2025-02-11): 'if the pte "
        "lock was released midway, the pte entries may be refilled with physical pages by another thread'",
        "zap_pte_range's fast path after the ptl was dropped midway through the table",
        "reclaim_refilled",
        model=ReclaimsRefilledTable,
    ),
    mutant(
        pt_reclaim,
        "reclaim_without_pmd_clear",
        (MAPS_FREED_TABLE, WALK_FREED_TABLE),
        "mm/pt_reclaim.c try_get_and_clear_pmd(): '*pmdval = pmdp_get_lockless(pmd); pmd_clear(pmd);'",
        "the fast path frees the table without clearing the pmd that maps it",
        "tables_reclaimed",
        model=ReclaimWithoutPmdClear,
    ),
    mutant(
        pt_reclaim,
        "tables_freed_after_ipi",
        (WALK_FREED_TABLE, SLAB_UAF),
        "x86: mm: free page table pages by RCU instead of semi RCU (Qi Zheng, the pt_reclaim series, "
        "2024): walkers that map a table under rcu_read_lock take the IPI and go on",
        "the reclaimed tables freed after the flush IPI, with no grace period",
        "tables_reclaimed",
        model=TablesFreedAfterIpi,
    ),
    mutant(
        pt_reclaim,
        "fallback_freed_after_ipi",
        (WALK_FREED_TABLE, SLAB_UAF),
        "arch/x86/include/asm/tlb.h: '#ifdef CONFIG_PT_RECLAIM ... __tlb_remove_table_one_rcu' (x86: mm: free "
        "page table pages by RCU instead of semi RCU): mm/mmu_gather.c tlb_remove_table()'s fallback when the "
        "batch page cannot be allocated",
        "with no batch page, the reclaimed table is freed after the IPI instead of a grace period",
        "table_batch_failed",
        model=FallbackFreedAfterIpi,
    ),
    mutant(
        pt_reclaim,
        "map_lock_without_recheck",
        FREE_MAPPED_TABLE,
        "mm/pgtable-generic.c __pte_offset_map_lock(): 'if (likely(pmd_same(pmdval, pmdp_get_lockless(pmd))))' "
        "(0d940a9b270b, 6.5)",
        "pte_offset_map_lock without the pmd recheck under the ptl",
        "pte_map_retries",
        model=MapLockWithoutRecheck,
    ),
    mutant(
        pt_reclaim,
        "ptlock_freed_with_table",
        SLAB_UAF,
        "mm: pgtable: make ptlock be freed by RCU (Qi Zheng, the pt_reclaim series, 2024): a walker that "
        "read the pmd under rcu_read_lock takes the ptl of a table just unhooked; the ptl must outlive "
        "the grace period with it",
        "the split ptl freed when the table is unhooked, before the grace period",
        "pte_map_retries",
        model=PtlockFreedWithTable,
    ),
    mutant(
        pt_reclaim,
        "flush_leaf_only",
        WALK_FREED_TABLE,
        "c2ff4764e03e, arm64: tlb: Flush walk cache when unsharing PMD tables: 'last_level = "
        "!(tlb->freed_tables || tlb->unshared_tables)'; include/asm-generic/tlb.h: freed_tables",
        "the flush after pt_reclaim freed a table drops the leaf entries but not the walk cache",
        "pwc_flushed",
        model=FlushLeafOnly,
    ),
)
