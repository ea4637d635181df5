"""vma_lookup: "Splitting the mmap_sem" (Matthew Wilcox and others, linux-mm, 2019-12-03 to 2020-02-07).

Page faults look a VMA up and must keep it from going away while they
sleep; mmap, munmap and MAP_FIXED replace VMAs and tear down what they
mapped.  Each policy answers "how does a fault pin its VMA, and how does an
unmapper wait for it" differently:

  mmap_lock         the baseline: mmap_lock read for faults, write for changes
                    (munmap downgrades it to read for the teardown).
  rcu_table_free    the baseline where the TLB flush is a broadcast, not an
                    IPI: tables freed by RCU (MMU_GATHER_RCU_TABLE_FREE).
  rcu_vma_refcount  Wilcox (2019-12-03): lookup under RCU, a per-VMA refcount,
                    munmap waits for it, synchronize_rcu, then zaps, frees
                    the tables and VMAs and flushes; BABY/ZOMBIE (Glisse, 2019-12-05) and the ZERO
                    entry (Wilcox, 2019-12-09); ->map_pages under RCU for a
                    giant VMA; synchronize_rcu skipped when mm_users <= 1
                    (Wilcox, 2019-12-13).
  srcu              Wilcox's restatement of Zijlstra's design (2020-02-06):
                    faults inside srcu_read_lock(&vma_srcu); munmap removes
                    the VMA, synchronize_srcu(), then tears down and frees.
  srcu_spf          Zijlstra's own answer (2020-02-06/07): faults inside SRCU
                    walk with interrupts off and validate the VMA under the
                    ptl; munmap does not wait, the VMA is freed by call_srcu.
  speculative       Dufour's SPF (2020-02-07): a lockless lookup, the VMA's
                    seqcount sampled and validated again under the ptl before
                    the PTE is installed; mmap_lock on a mismatch.
  per_vma_lock      what landed in 6.4: lock_vma_under_rcu (vm_lock_seq vs
                    mm_lock_seq), vma_start_write, mm_lock_seq bumped by
                    mmap_write_unlock and mmap_write_downgrade; VMAs SLAB_TYPESAFE_BY_RCU, so a
                    lookup checks vm_mm and the range after locking.

The model (page tables, TLBs, faults, zap, fork) is `policies.mm`; this
package holds only what the mechanisms change: one module per policy,
its broken twins right below it; model.py runs the model's own mutants
(policies/mm/broken.py) under the baseline; litmus.py has the programs
in which the races are reachable.
"""

from __future__ import annotations

from policies import register
from policies.vma_lookup import mmap_lock, model, per_vma_lock, rcu_vma_refcount, speculative, srcu
from policies.vma_lookup.common import VmaPolicy
from policies.vma_lookup.scenario import VmaLookup

register(
    VmaLookup(
        policies=(
            mmap_lock.mmap_lock,
            mmap_lock.rcu_table_free,
            *mmap_lock.MUTANTS,
            *model.MUTANTS,
            rcu_vma_refcount.rcu_vma_refcount,
            *rcu_vma_refcount.MUTANTS,
            srcu.srcu,
            srcu.srcu_spf,
            *srcu.MUTANTS,
            speculative.speculative,
            *speculative.MUTANTS,
            per_vma_lock.per_vma_lock,
            *per_vma_lock.MUTANTS,
        )
    )
)

__all__ = ["VmaLookup", "VmaPolicy"]
