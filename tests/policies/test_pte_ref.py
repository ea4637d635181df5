"""pte_ref beyond the generic scenario tests: what each policy does with the tables MADV_DONTNEED
empties, and the paths a reclaimed table sends the others through."""

from __future__ import annotations

FILL = [["access", 0, v, 1] for v in range(8)]


def _run(mmtorture_run, policy: str, program: list, seed: int = 0):
    r = mmtorture_run("pte_ref", policy, cpus=len(program), seed=seed, scheduler="random", program=program)
    assert r.findings == [], [f.format() for f in r.findings]
    return r.report["counters"]


def test_never_free_keeps_the_tables_madvise_empties(mmtorture_run):
    c = _run(mmtorture_run, "never_free", [(FILL + [["madvise", 0, 0, 7]]) * 3])
    assert c["ptes_zapped"] == 24 and c["tables_reclaimed"] == 0 and c["tables_rcu_freed"] == 0


def test_pt_reclaim_frees_a_table_emptied_whole_by_either_path(mmtorture_run):
    """A table with a few pages is zapped under one hold of its ptl and unhooked there (the fast
    path); a full one fills the gather's batch, the ptl is dropped midway, and the table is
    checked empty again under the pmd lock and the ptl (the slow path).  Each is freed by RCU
    and the next write faults a new table in."""
    few = FILL[:2] + [["madvise", 0, 0, 7]]
    c = _run(mmtorture_run, "pt_reclaim", [few * 3])
    assert c["tables_reclaimed"] == 3 and c["reclaim_slow"] == 0 and c["tables_rcu_freed"] == 3
    c = _run(mmtorture_run, "pt_reclaim", [(FILL + [["madvise", 0, 0, 7]]) * 3])
    assert c["tables_reclaimed"] == 3 and c["reclaim_slow"] == 3
    c = _run(mmtorture_run, "pt_reclaim", [FILL[:2] + [["madvise", 0, 1, 7]]])  # not the whole table: kept
    assert c["tables_reclaimed"] == 0


def test_pt_reclaim_beside_walkers_and_faults_goes_through_its_races(mmtorture_run):
    """Two threads: one fills and empties table 0, the other walks it and faults into it.  Over
    seeds of the random strategy the others meet a table unhooked under them: a fault's
    pte_offset_map finds the pmd empty, pte_offset_map_lock sees it change under the ptl, the
    slow path finds the table refilled.  None of it is a finding."""
    program = [
        (FILL + [["madvise", 0, 0, 7]]) * 3,
        ([["walk", 1, 0, 7]] + [["access", 1, v, 1] for v in range(4)]) * 3,
    ]
    seen: dict[str, int] = {}
    for seed in range(12):
        for k, v in _run(mmtorture_run, "pt_reclaim", program, seed).items():
            seen[k] = seen.get(k, 0) + v
    assert seen["tables_reclaimed"] > 0 and seen["walks"] == 36 and seen["ptes_walked"] > 0
    assert seen["pte_map_failed"] + seen["pte_map_retries"] > 0, seen
    assert seen["reclaim_refilled"] > 0, seen


def test_the_seeds_size_table_follows_from_the_geometry():
    """The preface's table: 3 GiB of 32-bit user space and 48-bit addresses, 4 KiB pages."""
    from policies.mm.geometry import PMD_LEVEL, PTE_LEVEL, max_table_bytes

    assert max_table_bytes(3 << 30, 4096, 4, PTE_LEVEL) == 3 << 20
    assert max_table_bytes(3 << 30, 4096, 4, PMD_LEVEL) == 3 << 10
    assert max_table_bytes(1 << 48, 4096, 8, PTE_LEVEL) == 512 << 30
    assert max_table_bytes(1 << 48, 4096, 8, PMD_LEVEL) == 1 << 30
