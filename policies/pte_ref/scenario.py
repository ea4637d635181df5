"""The pte_ref scenario: vma_lookup's process, its faults, munmap, GUP, fork and exit, with the
seed's workload (an allocator that faults extents in, MADV_POPULATE_WRITE, and gives them back
with MADV_DONTNEED or a MADV_FREE-like zap, under mmap_lock for read) and the seed's
page-table walker (section 3's thread A)."""

from __future__ import annotations

from dataclasses import replace

from policies.mm import Geometry
from policies.pte_ref.litmus import LITMUS
from policies.scenario import Arg, Operation, Policy
from policies.vma_lookup.common import TASK_MM, VmaPolicy, clamp_range
from policies.vma_lookup.scenario import VmaLookup, as_task, user_access

MADVISE_WEIGHT = 8  # jemalloc gives memory back far more often than it maps or unmaps


class PteRef(VmaLookup):
    doc = "PTE tables freed when nothing maps them, while faults, walkers and GUP hold mmap_lock for read"
    counters = (
        *VmaLookup.counters,
        "walks",
        "populates",
        "madv_frees",
        "tables_reclaimed",
        "reclaim_slow",
        "reclaim_refilled",
        "reclaim_pml_busy",
        "user_pte_tables_freed",
        "pte_tryget_zero",
        "pte_alloc_dying",
    )

    def __init__(self, geometry: Geometry | None = None, policies: tuple[VmaPolicy, ...] = (), name: str = "pte_ref"):
        super().__init__(geometry, policies, name)

    def operations(self, policy: VmaPolicy) -> tuple[Operation, ...]:
        ops = [replace(op, weight=MADVISE_WEIGHT) if op.name == "madvise" else op for op in super().operations(policy)]
        task, vpn = Arg("task", len(TASK_MM)), Arg("vpn", self.geometry.pages, address=True)
        ops.append(Operation("populate", 4, op_populate, (task, vpn, Arg("len", self.max_len))))
        ops.append(Operation("madv_free", 3, op_madv_free, (task, vpn, Arg("len", self.max_len))))
        ops.append(Operation("walk", 4, op_walk, (task, vpn, Arg("len", self.max_len))))
        return tuple(ops)

    def litmus(self, policy: Policy) -> list | None:
        return LITMUS.get(policy.name)

    def stat_text(self, counters: dict[str, int]) -> str:
        keys = (
            "faults",
            "madvises",
            "walks",
            "user_pte_tables_freed",
            "tables_reclaimed",
            "reclaim_slow",
            "tables_freed",
        )
        return " ".join(f"{k}: {counters.get(k, 0)}" for k in keys)


@as_task
def op_populate(w, mm: int, vpn: int, length: int) -> None:
    """madvise(MADV_POPULATE_WRITE), as an allocator faults in an extent it hands out: a write to
    each page of the range, faulting what is not mapped (the seed's workload fills tables
    before it empties them)."""
    w.count("populates")
    for v in range(*clamp_range(w, vpn, length)):
        user_access(w, mm, v, 1)


@as_task
def op_madv_free(w, mm: int, vpn: int, length: int) -> None:
    w.count("madv_frees")
    w.mm.madvise_free(w.cpu, mm, *clamp_range(w, vpn, length))


@as_task
def op_walk(w, mm: int, vpn: int, length: int) -> None:
    """The seed's page-table walker (section 3, thread A): mmap_read_lock, then each table of the
    range mapped and locked, read, unlocked (walk_page_range)."""
    w.count("walks")
    w.mm.walk_page_range(w.cpu, mm, *clamp_range(w, vpn, length))
