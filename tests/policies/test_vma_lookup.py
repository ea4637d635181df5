"""vma_lookup beyond the generic scenario tests: a user's geometry, and shrinking an mm race."""

from __future__ import annotations

import os

from policies import get_scenario
from stress.replay import replay
from stress.shrink import shrink
from tests.conftest import FIXTURES


def test_a_users_geometry_runs_clean(mmtorture_run):
    """Page tables of 16 entries (128-byte pages), 512 pages of address space, from a user's module."""
    r = mmtorture_run(
        "vma_lookup_big",
        "per_vma_lock",
        cpus=2,
        ops=150,
        seed=0,
        scheduler="random",
        policy_modules=[os.path.join(FIXTURES, "vma_big.py")],
    )
    assert r.findings == [], [f.format() for f in r.findings]
    assert r.report["counters"]["faults"] > 0


def test_a_speculative_race_shrinks_to_the_fault_and_the_munmap(mmtorture_run):
    sc = get_scenario("vma_lookup")
    litmus = sc.litmus(sc.policy("no_revalidate"))
    r = next(
        r
        for seed in range(100)
        if (
            r := mmtorture_run("vma_lookup", "no_revalidate", cpus=2, seed=seed, scheduler="random", program=litmus)
        ).findings
    )
    small = shrink(r.report, max_runs=400)
    assert small.runs < 400, small.summary()
    ops = [op[0] for p in small.after.program for op in p]
    assert small.check == "mm.pte-after-zap" and "mm.pte-after-zap" in small.final.checks
    assert len(ops) <= small.before.ops and small.after.preemptions < small.before.preemptions
    assert "access" in ops and {"munmap", "mmap"} & set(ops)
    for cpu, prog in enumerate(small.after.program):  # 1-minimal: no single operation can go
        for i in range(len(prog)):
            c = small.after.without_ops(cpu, i, 1)
            again = replay(r.report, strict=False, program=c.program, schedule=c.schedule())
            assert "mm.pte-after-zap" not in again.checks, (cpu, i, small.after)


def test_srcu_waits_one_grace_period_per_munmap(mmtorture_run):
    """Every SRCU grace period is a munmap's (or MAP_FIXED's) after it unpublished its VMAs, one
    each, or a fork's, which waits once for the faults that did not see it fork."""
    r = mmtorture_run("vma_lookup", "srcu", cpus=2, ops=300, seed=0, scheduler="random")
    c = r.report["counters"]
    assert r.findings == [] and c["munmap_gps"] > 0
    assert r.report["grace_periods"]["srcu0"] == c["munmap_gps"] + c["fork_gps"]
    assert c["munmap_gps"] <= c["munmaps"] + c["mmaps"] and c["fork_gps"] <= c["forks"] + c["enomem"]
