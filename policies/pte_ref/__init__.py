"""pte_ref: PTE page tables freed when nothing maps them (Qi Zheng, "[PATCH v3 14/15]
Documentation: add document for pte_ref", linux-mm, 2021-11-10), against what upstream
merged instead (mm/pt_reclaim.c, 6.14).

jemalloc-like allocators give memory back with MADV_DONTNEED under mmap_lock
for read; the pages go, the empty PTE tables stay until munmap or exit (the
seed's table: up to 512 GiB of PTE tables for one 64-bit process).  Each
policy answers "who may free a PTE table while mmap_lock is held only for
read, and how does a walker keep it":

  never_free   today's kernel: tables are freed only by free_pgtables, under
               mmap_lock for write (munmap) or at exit.
  pte_ref      the seed: every entry that is not none and every visitor (fault,
               zap, walker, slow GUP) holds the table's pte_refcount; at 0 the
               table is unhooked under the pmd lock, flushed by IPI and freed.
  pt_reclaim   6.14: a MADV_DONTNEED zap that emptied a whole table under one
               hold of its ptl unhooks it there if the pmd lock is free
               (try_get_and_clear_pmd), else checks it empty again under both
               locks (try_to_free_pte); the table is freed through the
               mmu_gather, after the flush and a grace period; walkers use
               6.5's pte_offset_map_lock, which rechecks the pmd under the ptl.

The model (page tables, TLBs, faults, zap, the page walker) is
`policies.mm`; this package holds what the mechanisms change, one module per
policy with its broken twins right below it, and litmus.py.
"""

from __future__ import annotations

from policies import register
from policies.pte_ref import never_free, pt_reclaim, pte_ref
from policies.pte_ref.scenario import PteRef

register(
    PteRef(
        policies=(
            never_free.never_free,
            pte_ref.pte_ref,
            *pte_ref.MUTANTS,
            pt_reclaim.pt_reclaim,
            *pt_reclaim.MUTANTS,
        )
    )
)

__all__ = ["PteRef"]
