"""The pte_ref benchmark's workloads are valid programs on pte_ref_wide that every correct policy
runs cleanly, with the tables each policy keeps; and its verdict reads the figures as the issue
says.  (The speed itself is measured by `make bench`, never asserted here.)"""

from __future__ import annotations

import pytest

from stress.bench_pte_ref import MODULE, PTE_REF_POLICIES, SCENARIO, WORKLOADS, K, pte_ref_program, verdicts

KEEPS = {"never_free": 2 * K, "pte_ref": 0, "pt_reclaim": 0}  # empty tables at the end of the seed's cycle


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("policy", PTE_REF_POLICIES)
def test_workload_runs_clean_and_leaves_the_tables_its_policy_keeps(mmtorture_run, policy, workload):
    program = [pte_ref_program(workload, cpu, 2) for cpu in range(2)]
    r = mmtorture_run(SCENARIO, policy, cpus=2, seed=0, scheduler="random", program=program, policy_modules=(MODULE,))
    assert r.findings == [], [f.format() for f in r.findings]
    c, end = r.report["counters"], r.report["gauges"]["quiescent"]
    assert c["faults"] == 2 * 2 * K + (2 * K if workload == "steady" else 0)
    assert c["sigsegv"] == 0 and c["enomem"] == 0
    if workload == "steady":
        assert end["pte_tables"] == 2 * K and end["empty_pte_tables"] == 0  # one page of each stays
    else:
        assert end["empty_pte_tables"] == KEEPS[policy]
    if workload == "walk":
        assert c["walks"] == 2 * 2 * 4 * K


def _results(cycle: dict[str, int], steady: dict[str, int], empty: dict[str, int]) -> dict:
    return {
        p: {
            "cycle": {"faults_per_s": cycle[p], "end": {"empty_pte_tables": empty[p]}},
            "steady": {"faults_per_s": steady[p], "accesses_per_fault": 100 + (13 if p == "pte_ref" else 0)},
        }
        for p in PTE_REF_POLICIES
    }


def test_the_verdict_weighs_memory_then_fault_throughput():
    steady = dict.fromkeys(PTE_REF_POLICIES, 20_000)
    v = verdicts(_results({"never_free": 100, "pte_ref": 95, "pt_reclaim": 85}, steady, KEEPS), 2 * K)
    assert v["pte_ref"]["verdict"] == "confirmed" and v["pte_ref"]["fault_cost"] == 0.05
    assert v["pt_reclaim"]["verdict"] == "inconclusive"
    assert v["pte_ref"]["refcount_accesses_per_fault"] == 13 and v["pt_reclaim"]["refcount_accesses_per_fault"] == 0
    v = verdicts(_results({"never_free": 100, "pte_ref": 79, "pt_reclaim": 99}, steady, {**KEEPS, "pt_reclaim": 5}), 12)
    assert v["pte_ref"]["verdict"] == "refuted: fault throughput"
    assert v["pt_reclaim"]["verdict"] == "refuted: empty tables kept"
