"""Per mutant, a program in which its race is reachable: regression tests (`hunt --litmus`, the
test suite), searched with the random strategy; blind hunts never see them."""

from __future__ import annotations


def _repeat(ops: list, n: int) -> list:
    return [list(op) for _ in range(n) for op in ops]


# The setup maps [0, 16) and [32, 72); tasks 0 and 1 are threads of mm 0.  Table 0 maps vpn
# [0, 8): filled by writes, then emptied whole by MADV_DONTNEED, which pt_reclaim frees.
_FILL = [["access", 0, v, 1] for v in range(8)]
LITMUS = {
    # pte_ref.  The walker reads the pmd and maps the table while the zap drops its last reference.
    "walker_without_tryget": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["walk", 1, 0, 7]], 6),
    ],
    # A visitor takes the pmd lock between the zap's put to 0 and free_user_pte_table's unhook.
    "get_not_unless_zero": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["walk", 1, 0, 7], ["access", 1, 3, 1]], 6),
    ],
    # Fast GUP walks the table with interrupts off while the zap's last put frees it.
    "freed_before_flush": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["gup", 1, 1, 1], ["access", 1, 1, 1]], 6),
    ],
    # Filled, emptied: the table keeps the references of the entries the zap cleared.
    "zap_without_pte_put": [[*_FILL[:2], ["madvise", 0, 0, 7]], [["access", 1, 40, 1]]],
    # Table 1 (vpn [8, 16)) is entry 1 of its pmd table: emptied, it unhooks entry 0's.
    "backpointer_without_index": [
        [["access", 0, 9, 1], ["access", 0, 1, 1], ["madvise", 0, 8, 7]],
        [["access", 1, 40, 1]],
    ],
    # The zap drops the ptl midway (the batch holds half a table); the other thread refills the
    # half it zapped first before the zap's last hold takes the fast path.
    "reclaim_refilled_table": [
        _repeat([*_FILL, ["madvise", 0, 0, 7]], 4),
        _repeat([["access", 1, v, 1] for v in range(4)], 8),
    ],
    # A few pages, so the zap holds the ptl throughout and takes the fast path; the table is
    # emptied and reclaimed last: nothing walks it again before the sweep looks.
    "reclaim_without_pmd_clear": [[*_FILL[:2], ["madvise", 0, 0, 7]], [["access", 1, 40, 1]]],
    # The walker reads the pmd under RCU; the table is unhooked and freed before it takes the ptl.
    "tables_freed_after_ipi": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["walk", 1, 0, 7], ["access", 1, 2, 0]], 6),
    ],
    # As tables_freed_after_ipi, on the path taken when the gather gets no batch page (a
    # GFP_NOWAIT failure, which the scenario injects at its rate): many rounds.
    "fallback_freed_after_ipi": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 24),
        _repeat([["walk", 1, 0, 7], ["access", 1, 2, 0]], 24),
    ],
    # The walker reads the pmd under RCU; the table is unhooked and its ptl freed before it locks.
    "ptlock_freed_with_table": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["walk", 1, 0, 7], ["access", 1, 2, 0]], 6),
    ],
    # The other thread's MMU caches table 0's pmd entry; MADV_DONTNEED frees the table; a TLB miss
    # in the same table walks from the cached entry.
    "flush_leaf_only": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["access", 1, 2, 0], ["access", 1, 5, 0], ["access", 1, 40, 0]], 6),
    ],
    # A fault reads the pmd, MADV_DONTNEED unhooks the table, the fault locks it and installs.
    "map_lock_without_recheck": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["access", 1, v, 1] for v in range(2, 6)], 6),
    ],
}
