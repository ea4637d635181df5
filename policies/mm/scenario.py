"""MmScenario: what every scenario built on the mm model shares.

Its regions (the model's), attaching the model with the policy's hooks,
booting it, the quiescent sweep, the teardown that exits every mm and
checks that nothing was left behind, and the model's counters.  A
mechanism's scenario (policies/vma_lookup) adds its operations, its setup
and its own counters.
"""

from __future__ import annotations

import numpy as np

from policies.mm.geometry import Geometry
from policies.mm.mm import MmModel
from policies.mm.sweep import census, check_swap_map, sweep
from policies.scenario import Needs, Region, Scenario, World
from shm.checks import SLAB_LEAK


class MmScenario(Scenario):
    """A scenario on the mm model: `geometry` sizes the page tables, `max_mms` the processes.

    One GFP_NOWAIT allocation in 20 fails (should_fail_alloc_page, unless --nowait-fail-rate
    says otherwise), so that the paths that may not sleep take their way out: ->map_pages
    returns VM_FAULT_RETRY, a migration puts the old page back."""

    max_mms = 3
    counters: tuple[str, ...] = MmModel.COUNTERS

    def __init__(self, geometry: Geometry | None = None, *, srcu_domains: int = 0):
        self.geometry = geometry or Geometry()
        self.needs = Needs(
            pool_pages=4 * self.geometry.pages + 512,
            page_size=self.geometry.page_size_needed(),
            srcu_domains=srcu_domains,
            nowait_fail_rate=0.05,
        )

    def regions(self, ncpus: int) -> list[Region]:
        return MmModel.regions(ncpus, self.geometry, self.max_mms)

    def attach(self, w: World) -> None:
        w.mm = w.policy.build_model(w, self.geometry)
        w.mm.attach()

    def setup(self, w: World) -> None:
        """Boot: the caches, the zero page, mm 0 with a thread per CPU."""
        w.mm.setup(w.cpu, w.ncpus)

    def gauges(self, w: World) -> dict[str, int]:
        """Page-table bytes, PTE tables and the empty ones among them, over the live mms."""
        return census(w.mm)

    def sweep(self, w: World) -> None:
        """The drivers release the pins they kept, then the sweep."""
        w.mm.release_all_pins(w.cpu)
        for ssp in w.srcu:
            ssp.barrier(w.cpu)
        w.rcu.barrier(w.cpu)
        sweep(w.mm, w.cpu)

    def teardown(self, w: World) -> None:
        """Every mm exits; after the callbacks ran, no VMA, index array or swap slot may be left."""
        m = w.mm
        m.release_all_pins(w.cpu)
        for mm in m.live_mms():
            m.mm_mem.store32(m.mm_off(mm, "mm_users"), 1)
            m.mmput(w.cpu, mm)
        for ssp in w.srcu:
            ssp.barrier(w.cpu)
        w.rcu.barrier(w.cpu)
        m.free_zero_page(w.cpu)
        check_swap_map(m, w.cpu, np.zeros(m.swap_slots, dtype=np.int64))
        for cache in (m.vma_cache, m.index_cache, m.ptlock_cache):
            left = cache.allocated()
            if len(left):
                w.cpu.report(
                    SLAB_LEAK,
                    f"{len(left)} {cache.name} object(s) never freed after exit",
                    slots=[int(s) for s in left[:16]],
                )
