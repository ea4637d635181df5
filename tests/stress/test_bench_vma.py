"""The vma benchmark's workloads are valid programs that every correct policy runs cleanly.

(The speed itself is measured by `make bench`, never asserted here.)"""

from __future__ import annotations

import pytest

from stress.bench_vma import VMA_POLICIES, WORKLOADS, vma_program


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("policy", VMA_POLICIES)
def test_workload_runs_clean_and_faults(mmtorture_run, policy, workload):
    program = [vma_program(workload, cpu, 2) for cpu in range(2)]
    r = mmtorture_run("vma_lookup", policy, cpus=2, seed=0, scheduler="random", program=program)
    assert r.findings == [], [f.format() for f in r.findings]
    c = r.report["counters"]
    assert c["faults"] >= 2 * 2 * 16
    assert c["sigsegv"] == 0 and c["enomem"] == 0
    if workload == "churn":
        assert c["munmaps"] == 4
