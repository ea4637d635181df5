"""The split ptl allocated beside its table (ALLOC_SPLIT_PTLOCKS; include/linux/mm.h ptlock_alloc,
ptlock_ptr, ptlock_free), as a kernel whose spinlock_t does not fit in struct page has it
(lockdep, DEBUG_SPINLOCK).

pagetable_pte_ctor() allocates the lock from the "page->ptl" kmem_cache, and
ptlock_free() gives it back when the table is freed: with
MMU_GATHER_RCU_TABLE_FREE, from the table's own RCU callback (the dtor moved
to __tlb_remove_table, "[PATCH v5 00/17] move pagetable_*_dtor() to
__tlb_remove_table()", 2025).  A walker that read the pmd under RCU and then
takes pte_lockptr() of a table another CPU just unhooked takes a lock that
must still be there: "mm: pgtable: make ptlock be freed by RCU" (Qi Zheng,
the pt_reclaim series) is the fix for the syzbot report of it.  Taking a
freed lock is a slab use-after-free.
"""

from __future__ import annotations

import numpy as np

from policies.mm.pgtable import PageTables
from shm import SPINLOCK, Spinlock
from shm.checks import SLAB_LEAK
from shm.pool import PFN_MASK

PTLOCK = np.dtype([("ptl", SPINLOCK)])
_PTL_WORD = 3  # page->private[3]: ptdesc->ptl, the lock's slab reference


class SplitPtlocks(PageTables):
    """Put before MmModel in a model's bases: ptls in the "ptlock" kmem_cache (MmModel declares
    it), one per PTE table."""

    def _ptl_off(self, table: int) -> int:
        return self.pool.field_off(table & PFN_MASK, "private") + 8 * _PTL_WORD

    def ptlock_alloc(self, cpu, table: int) -> bool:
        """ptlock_alloc(): a lock from the cache, unlocked (spin_lock_init), named by the table."""
        cache = self.ptlock_cache
        ref = cache.alloc(cpu)
        if ref is None:
            return False
        self.mm_mem.store32(cache.off(ref, "ptl"), 0)
        self.page_mem.store64(self._ptl_off(table), ref)
        return True

    def ptlock_free(self, cpu, table: int) -> None:
        """ptlock_free(): the lock back to the cache."""
        self.ptlock_cache.free(cpu, self.page_mem.load64(self._ptl_off(table)))

    def pte_lockptr(self, cpu, table: int) -> Spinlock:
        """ptlock_ptr(): the table's lock, checked as KASAN checks the access (slab.uaf if freed)."""
        cache = self.ptlock_cache
        ref = self.page_mem.load64(self._ptl_off(table))
        cache.check(cpu, ref, f"spin_lock(pte_lockptr()) of table {table & PFN_MASK}")
        return self.machine.handle(Spinlock, self.seg_index, cache.off(ref, "ptl"))

    def sweep_tables(self, cpu, tables: np.ndarray) -> None:
        """Quiescent: every lock in the cache is a live PTE table's (else leaked with its table)."""
        super().sweep_tables(cpu, tables)
        pfns = tables[:, 0] & PFN_MASK
        owned = set((self.pool.pages["private"][pfns, _PTL_WORD] & 0xFFFF).tolist())
        stray = [int(s) for s in self.ptlock_cache.allocated() if int(s) not in owned]
        if stray:
            cpu.report(SLAB_LEAK, f"{len(stray)} ptlock object(s) allocated that no live PTE table names", slots=stray)
