"""pte_ref beyond the generic scenario tests: what each policy does with the tables MADV_DONTNEED
empties, and the paths a reclaimed table sends the others through."""

from __future__ import annotations

FILL = [["access", 0, v, 1] for v in range(8)]


def _run(mmtorture_run, policy: str, program: list, seed: int = 0):
    r = mmtorture_run("pte_ref", policy, cpus=len(program), seed=seed, scheduler="random", program=program)
    assert r.findings == [], [f.format() for f in r.findings]
    return r.report["counters"]


def test_never_free_keeps_the_tables_madvise_empties(mmtorture_run):
    """Three rounds of filling table 0 and emptying it: one table all along, its pages zapped
    each time, the table freed only when the process exits (the teardown's free_pgtables)."""
    c = _run(mmtorture_run, "never_free", [(FILL + [["madvise", 0, 0, 7]]) * 3])
    assert c["ptes_zapped"] == 24 and c["tables_reclaimed"] == 0 and c["faults"] == 24
    assert c["tables_freed"] == 2  # at exit: the PTE table and its pmd table
    pt = _run(mmtorture_run, "pt_reclaim", [(FILL + [["madvise", 0, 0, 7]]) * 3])
    assert pt["tables_freed"] == 4  # each round's PTE table, then the pmd table at exit


def test_pt_reclaim_frees_a_table_emptied_whole_by_either_path(mmtorture_run):
    """A table with a few pages is zapped under one hold of its ptl and unhooked there (the fast
    path); a full one fills the gather's batch, the ptl is dropped midway, and the table is
    checked empty again under the pmd lock and the ptl (the slow path).  Each is freed by RCU
    and the next write faults a new table in."""
    few = FILL[:2] + [["madvise", 0, 0, 7]]
    c = _run(mmtorture_run, "pt_reclaim", [few * 3])
    assert c["tables_reclaimed"] == 3 and c["reclaim_slow"] == 0
    assert c["faults"] == 6  # each round's first write faulted a new table in, then the second page
    c = _run(mmtorture_run, "pt_reclaim", [(FILL + [["madvise", 0, 0, 7]]) * 3])
    assert c["tables_reclaimed"] == 3 and c["reclaim_slow"] == 3
    c = _run(mmtorture_run, "pt_reclaim", [FILL[:2] + [["madvise", 0, 1, 7]]])  # not the whole table: kept
    assert c["tables_reclaimed"] == 0


def test_pt_reclaim_beside_walkers_and_faults_goes_through_its_races(mmtorture_run):
    """Two threads: one fills two pages of table 0 and empties it (the fast path), the other
    faults into it and walks it.  Over seeds of the random strategy the other meets a table
    unhooked under it: pte_offset_map_lock finds the pmd changed under the ptl and maps again,
    the slow path finds the table refilled and keeps it.  None of it is a finding."""
    program = [
        ([*FILL[:2], ["madvise", 0, 0, 7]]) * 6,
        ([["access", 1, v, 1] for v in range(2, 6)] + [["walk", 1, 0, 7]]) * 6,
    ]
    seen: dict[str, int] = {}
    for seed in range(24):
        for k, v in _run(mmtorture_run, "pt_reclaim", program, seed).items():
            seen[k] = seen.get(k, 0) + v
    assert seen["tables_reclaimed"] > 0 and seen["walks"] == 144 and seen["ptes_walked"] > 0
    assert seen["pte_map_retries"] > 0 and seen["reclaim_refilled"] > 0, seen


def test_pte_ref_frees_a_table_when_its_last_user_goes(mmtorture_run):
    """The seed's count: each entry and each visitor holds the table.  A zap that empties it
    drops the count to 0 and frees it whole or not (no batch, no ptl dropped midway); a walk,
    a slow GUP or a fault that finds nothing leaves it as it was; every write after a zap
    faults a new table in."""
    c = _run(mmtorture_run, "pte_ref", [(FILL + [["madvise", 0, 0, 7]]) * 3])
    assert c["user_pte_tables_freed"] == 3 and c["tables_freed"] == 4 and c["faults"] == 24
    keep = FILL[:2] + [["madvise", 0, 1, 7], ["walk", 0, 0, 7], ["gup", 0, 0, 0], ["access", 0, 0, 1]]
    c = _run(mmtorture_run, "pte_ref", [keep])
    assert c["faults"] == 2  # vpn 0 still maps a page: the walker's and GUP's puts left the table
    assert c["user_pte_tables_freed"] == 1  # at exit
    c = _run(mmtorture_run, "pte_ref", [[["access", 0, 3, 0], ["madvise", 0, 3, 0], ["walk", 0, 0, 7]]])
    assert c["user_pte_tables_freed"] == 1 and c["walks"] == 1 and c["ptes_walked"] == 0


def test_pte_ref_beside_walkers_and_faults_goes_through_its_races(mmtorture_run):
    """Section 3 with the fix: a walker that holds a reference while a MADV_DONTNEED empties the
    table frees it with its own put; a visitor that comes while the count is 0 and the table
    not yet unhooked fails pte_get_unless_zero, and a fault waits for the unhook and installs
    a new table.  None of it is a finding."""
    program = [
        ([*FILL[:2], ["madvise", 0, 0, 7]]) * 6,
        ([["walk", 1, 0, 7], ["access", 1, 3, 1]]) * 6,
    ]
    seen: dict[str, int] = {}
    for seed in range(24):
        for k, v in _run(mmtorture_run, "pte_ref", program, seed).items():
            seen[k] = seen.get(k, 0) + v
    assert seen["walker_freed_table"] > 0 and seen["pte_tryget_zero"] > 0, seen
    assert seen["user_pte_tables_freed"] > seen["walker_freed_table"]


def test_the_gauges_count_the_tables_madvise_emptied(mmtorture_run):
    """The runner's last sample, at the quiescent point: never_free keeps the table the
    MADV_DONTNEED emptied, pte_ref and pt_reclaim do not; page-table bytes follow (the pmd
    table and one PTE table or none: mm_pgtables_bytes does not count the pgd).  Sampled at
    an interval, the run's samples come first, one as the CPUs start."""
    program = [[*FILL[:2], ["madvise", 0, 0, 7]]]
    want = {"never_free": (1, 1), "pte_ref": (0, 0), "pt_reclaim": (0, 0)}
    for policy, (tables, empty) in want.items():
        r = mmtorture_run("pte_ref", policy, cpus=1, seed=0, scheduler="random", program=program, gauge_interval=0.01)
        g = r.report["gauges"]
        assert g["quiescent"] == {
            "pgtable_bytes": (1 + tables) * 64,
            "pte_tables": tables,
            "empty_pte_tables": empty,
        }, policy
        assert g["samples"] and g["samples"][0]["t_s"] >= 0 and set(g["samples"][0]) == {"t_s", *g["quiescent"]}


def test_the_seeds_size_table_follows_from_the_geometry():
    """The preface's table: 3 GiB of 32-bit user space and 48-bit addresses, 4 KiB pages."""
    from policies.mm.geometry import PMD_LEVEL, PTE_LEVEL, max_table_bytes

    assert max_table_bytes(3 << 30, 4096, 4, PTE_LEVEL) == 3 << 20
    assert max_table_bytes(3 << 30, 4096, 4, PMD_LEVEL) == 3 << 10
    assert max_table_bytes(1 << 48, 4096, 8, PTE_LEVEL) == 512 << 30
    assert max_table_bytes(1 << 48, 4096, 8, PMD_LEVEL) == 1 << 30
