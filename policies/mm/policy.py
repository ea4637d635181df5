"""MmPolicy: what a mechanism changes in the model's own functions, by name.

The model calls these hooks where the kernel's code would call the
mechanism's (rcutorture's ops table; shuttle's Scheduler trait): a field
left None is the kernel's baseline.  A mechanism's policy class extends it
with the hooks of its own scenario (policies/vma_lookup: VmaPolicy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies.mm.geometry import Geometry
from policies.mm.mm import MmModel
from policies.scenario import Policy


@dataclass(frozen=True, kw_only=True)
class MmPolicy(Policy):
    """The model's hooks, and the model itself.

    vma_free(cpu, vma): how a VMA out of the tree is freed (None: vm_area_free at once).
    remove_tables(cpu, mm, floor, ceiling, tables): how free_pgtables' unhooked tables are
    freed (None: tlb_remove_table_sync_one).
    model: the model class; a variant overrides one kernel function (policies/mm/broken.py).
    typesafe_vmas: the VMA cache is SLAB_TYPESAFE_BY_RCU."""

    vma_free: Callable[[Any, int], None] | None = None
    remove_tables: Callable[..., None] | None = None
    model: type[MmModel] = MmModel
    typesafe_vmas: bool = False

    def build_model(self, w: Any, geometry: Geometry) -> MmModel:
        """The model of this process, with this policy's hooks."""
        return self.model(
            w, geometry, typesafe_vmas=self.typesafe_vmas, vma_free=self.vma_free, remove_tables=self.remove_tables
        )
