"""`pte_ref_wide`: the scenario with the seed's benchmark geometry, 64-entry PTE tables (the
kernel's have 512), sixteen of them, 1024 pages; registered when imported
(`--policy-module policies.pte_ref.wide`), as `mmtorture bench pte_ref` does.

Its policies are pte_ref's correct ones: a table that many entries is what
the seed's allocator empties with one MADV_DONTNEED, and what pt_reclaim
frees only when the zap covers it whole.
"""

from __future__ import annotations

from policies import get_scenario, register
from policies.mm import Geometry
from policies.pte_ref.scenario import PteRef

WIDE = Geometry(pgd=2, pmd=8, pte=64)

register(PteRef(WIDE, tuple(p for p in get_scenario("pte_ref").policies if not p.mutant), name="pte_ref_wide"))
