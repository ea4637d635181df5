"""Per mutant, a program in which its race is reachable: regression tests (`hunt --litmus`, the
test suite), searched with the random strategy; blind hunts never see them."""

from __future__ import annotations


def _repeat(ops: list, n: int) -> list:
    return [list(op) for _ in range(n) for op in ops]


# Per mutant, a program in which its race is reachable (tasks 0 and 1 are threads of mm 0;
# task 2 is the first forked child).  The setup maps [0, 16) and [32, 72).
_UNMAP_REMAP = _repeat([["munmap", 1, 0, 11], ["mmap", 1, 0, 11, 1]], 6)
# Write faults over several pages: a fresh VMA's first one takes mmap_lock (it allocates the
# anon_vma), the next ones take the policy's lockless path.
_WRITES = [["access", 0, 4 + i % 6, 1] for i in range(12)]
LITMUS = {
    "munmap_no_refcount_wait": [_WRITES, _UNMAP_REMAP],
    "fault_without_srcu": [_WRITES, _UNMAP_REMAP],
    # Read faults in the table [8, 16), which the munmap of [0, 12) zaps but keeps (its neighbour
    # [12, 16) uses it), each after MADV_DONTNEED emptied the PTE.
    "no_revalidate": [
        _repeat([["madvise", 0, 9, 1], ["access", 0, 9, 0], ["access", 0, 10, 0]], 16),
        _repeat([["munmap", 1, 0, 11], ["mmap", 1, 0, 11, 1]], 12),
    ],
    # MADV_DONTNEED empties the PTEs but keeps the table, so each read faults and walks it.
    "spf_walk_irqs_on": [
        _repeat([["madvise", 0, 4, 1], ["access", 0, 4, 0], ["access", 0, 5, 0]], 16),
        _repeat([["munmap", 1, 0, 11], ["mmap", 1, 0, 11, 1]], 12),
    ],
    "free_pgtables_no_ipi": [_repeat([["access", 0, 4, 1], ["gup", 0, 4, 1]], 6), _UNMAP_REMAP],
    "tables_freed_after_tlbi": [_repeat([["access", 0, 4, 1], ["gup", 0, 4, 1]], 6), _UNMAP_REMAP],
    "skip_gp_single_thread": [
        [["fork", 0]] + _repeat([["munmap", 2, 0, 11], ["mmap", 2, 0, 11, 1]], 6),
        [["access", 1, 40 + i, 0] for i in range(12)] + _repeat([["remote", 2, 4]], 16),
    ],
    "reuse_before_flush": [
        _repeat([["access", 0, 4, 1], ["mmap", 0, 0, 11, 1], ["gup", 0, 4, 0], ["access", 0, 4, 0]], 3),
        _UNMAP_REMAP,
    ],
    # Two MADV_DONTNEEDs of one page: the second finds it cleared while the first has not flushed.
    "tlb_flush_not_nested": [
        _repeat([["access", 0, 4, 0], ["madvise", 0, 3, 2], ["access", 0, 4, 0]], 12),
        _repeat([["access", 1, 5, 0], ["madvise", 1, 4, 2]], 12),
    ],
    # Two threads fault in one swapped-out page: one of them finds the entry gone under the ptl.
    "swapin_without_pte_same": [
        _repeat([["access", 0, 4, 1], ["pageout", 0, 4, 0], ["access", 0, 4, 0]], 8),
        _repeat([["access", 1, 4, 0], ["access", 1, 9, 1]], 12),
    ],
    # A page swapped out, then its entry zapped.
    "zap_keeps_swap_slot": [
        _repeat([["access", 0, 4, 1], ["pageout", 0, 4, 0], ["madvise", 0, 4, 0]], 4),
        [["access", 1, 9, 1]],
    ],
    # cpu 0 migrates a page cpu 1 faults; one migration in 20 gets no new page (GFP_NOWAIT).
    "failed_migration_not_restored": [
        _repeat([["access", 0, 4, 1], ["migrate", 0, 4, 0]], 8),
        _repeat([["access", 1, 4, 0], ["madvise", 1, 9, 0]], 16),
    ],
    # cpu 0 keeps a writable TLB entry for vpn 5; cpu 2 evicts its own (vpn 37 shares the slot)
    # and write-faults vpn 5 while cpu 1 forks.
    "fork_without_vma_start_write": [
        _repeat([["access", 0, 5, 1]], 24),
        _repeat([["fork", 1], ["exit", 2]], 6),
        _repeat([["access", 0, 37, 0], ["access", 0, 5, 1]], 12),
    ],
    "anon_vma_checked_before_lock": [
        _WRITES,
        _repeat([["munmap", 1, 0, 15], ["mmap", 1, 100, 3, 0], ["munmap", 1, 100, 3], ["mmap", 1, 0, 15, 1]], 3),
    ],
    # Write faults in the table [8, 16) (emptied by MADV_DONTNEED so that they fault) while one
    # CPU unmaps and maps [0, 13) again and another forks: the fault's VMA slot is freed, and
    # may be reused by the child's copy of a VMA.
    "typesafe_no_recheck": [
        _repeat([["madvise", 0, 8, 4], ["access", 0, 8, 1], ["access", 0, 9, 1], ["access", 0, 10, 1]], 8),
        _repeat([["munmap", 1, 0, 13], ["mmap", 1, 0, 13, 1]], 8),
        _repeat([["fork", 1], ["exit", 2]], 8),
    ],
    # The child vmsplices vpn 5 (a long-term FOLL_GET) and unmaps it; the parent write-faults it.
    "cow_reuse_by_mapcount": [
        _repeat(
            [["access", 1, 5, 1], ["fork", 1], ["pin", 2, 5, 2, 1], ["munmap", 2, 0, 15], ["access", 1, 5, 1]]
            + [["unpin"], ["exit", 2]],
            3,
        ),
        [["access", 0, 9, 1]],
    ],
    # A thread pins vpn 5 (R/O, or for a device's writes), the process forks and writes vpn 5.
    "fork_shares_pinned_pages": [
        _repeat(
            [["access", 1, 5, 1], ["pin", 1, 5, 0, 1], ["fork", 1], ["access", 1, 5, 1], ["unpin"], ["exit", 2]], 3
        ),
        [["access", 0, 9, 1]],
    ],
    # A R/O pin of the zero page unshares it: an exclusive page mapped read-only; then a write.
    "wp_reuse_by_refcount_only": [
        _repeat([["madvise", 1, 5, 0], ["access", 1, 5, 0], ["pin", 1, 5, 0, 0], ["access", 1, 5, 1], ["unpin"]], 3),
        [["access", 0, 9, 1]],
    ],
    # After a fork a thread R/O-pins vpn 5, which the child shares; then the process writes it.
    "pin_without_unshare": [
        _repeat(
            [["access", 1, 5, 1], ["fork", 1], ["pin", 1, 5, 0, 0], ["access", 1, 5, 1], ["unpin"], ["exit", 2]], 3
        ),
        [["access", 0, 9, 1]],
    ],
    # Two of the model's mutants show another way too in generated programs (a PTE to a freed page is
    # also a mapped page below its mappings at the sweep; a PTE left behind is also a table freed under
    # it): their programs pin the way their check sees.  Of the model's other mutants, those above
    # (cow_reuse_by_mapcount, the pins', spf_walk_irqs_on) have a program too; the rest are
    # hunted blind.
    "gup_unpins_twice": [[["access", 0, 5, 1], ["gup", 0, 5, 0], ["access", 0, 5, 0]], [["access", 1, 9, 1]]],
    "zap_skips_last_pte": [[["access", 0, 3, 1], ["munmap", 0, 0, 3]], [["access", 1, 9, 1]]],
}
