"""Per mutant, a program in which its race is reachable: regression tests (`hunt --litmus`, the
test suite), searched with the random strategy; blind hunts never see them."""

from __future__ import annotations


def _repeat(ops: list, n: int) -> list:
    return [list(op) for _ in range(n) for op in ops]


# The setup maps [0, 16) and [32, 72); tasks 0 and 1 are threads of mm 0.  Table 0 maps vpn
# [0, 8): filled by writes, then emptied whole by MADV_DONTNEED, which pt_reclaim frees.
_FILL = [["access", 0, v, 1] for v in range(8)]
LITMUS = {
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
    # A fault reads the pmd, MADV_DONTNEED unhooks the table, the fault locks it and installs.
    "map_lock_without_recheck": [
        _repeat([*_FILL[:2], ["madvise", 0, 0, 7]], 6),
        _repeat([["access", 1, v, 1] for v in range(2, 6)], 6),
    ],
}
