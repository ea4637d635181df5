"""srcu: Zijlstra's design as Wilcox restated it (2020-02-06), faults inside srcu_read_lock(&vma_srcu)."""

from __future__ import annotations

from policies.mm import (
    Vmf,
)
from policies.mm.checks import (
    PTE_AFTER_ZAP,
)
from policies.scenario import World, mutant
from policies.vma_lookup.common import VmaPolicy, fault_generic, new_vma_plain
from policies.vma_lookup.mmap_lock import (
    mmap_locked,
    mmap_write_downgrade_plain,
    mmap_write_unlock_plain,
    munmap_locked,
    vma_free_now,
)
from policies.vma_lookup.rcu_vma_refcount import anon_vma_prepare_parent
from shm.checks import SLAB_UAF


def lookup_srcu(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    """srcu_read_lock(&vma_srcu), then walk the index: the index is RCU-safe (its arrays are
    freed after an RCU grace period), the VMA it yields is kept by SRCU."""
    srcu = w.srcu[0]
    idx = srcu.read_lock(w.cpu)
    w.rcu.read_lock(w.cpu)
    vma = w.mm.find_vma(w.cpu, mm, vpn)
    w.rcu.read_unlock(w.cpu)
    if not vma:
        srcu.read_unlock(w.cpu, idx)
        return None
    return Vmf(mm, vma, vpn, write, "srcu", idx)


def release_srcu(w: World, vmf: Vmf) -> None:
    w.srcu[0].read_unlock(w.cpu, vmf.token)


def lookup_srcu_unlocked(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    """DELIBERATELY BROKEN: the fault path skips srcu_read_lock(&vma_srcu).

    Wilcox (2020-02-06): "at the beginning of a page fault call
    srcu_read_lock(&vma_srcu) ... at the end of the fault, call
    srcu_read_unlock".  Without it synchronize_srcu() does not wait for
    the fault, and munmap tears the VMA down under it.  Where munmap
    passes the fault decides how it shows: the fault touches the freed VMA
    (slab.uaf), or it installs a PTE in a table the zap already passed, a
    PTE that outlives its VMA (Babka, 2019-12-10: "a parallel fault that
    started with the old VMA ... ends up being the last to install the
    PTE"; mm.pte-after-zap)."""
    w.rcu.read_lock(w.cpu)
    vma = w.mm.find_vma(w.cpu, mm, vpn)
    w.rcu.read_unlock(w.cpu)
    return Vmf(mm, vma, vpn, write, "none") if vma else None


def release_nothing(w: World, vmf: Vmf) -> None:
    pass


def synchronize_vma_srcu(w: World, mm: int) -> None:
    """munmap: after the VMA left the index, wait for every fault that could have found it;
    one grace period covers every VMA of the munmap, which then frees them at once."""
    srcu = w.srcu[0]
    if srcu.readers_active_idx(0) or srcu.readers_active_idx(1):
        w.count("srcu_waits")
    srcu.synchronize(w.cpu)
    w.count("munmap_gps")


srcu = VmaPolicy(
    "srcu",
    doc="Zijlstra: faults inside srcu_read_lock(&vma_srcu); munmap removes, synchronize_srcu, then frees",
    lookup=lookup_srcu,
    release=release_srcu,
    fault=fault_generic,
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_plain,
    after_unpublish=synchronize_vma_srcu,
    write_unlock=mmap_write_unlock_plain,
    write_downgrade=mmap_write_downgrade_plain,
    dup_lock_vma=anon_vma_prepare_parent,
    vma_free=vma_free_now,
)



MUTANTS = (
    mutant(srcu, "fault_without_srcu", (SLAB_UAF, PTE_AFTER_ZAP),
           "Wilcox 2020-02-06: 'at the beginning of a page fault call srcu_read_lock(&vma_srcu)'",
           "the fault path skips srcu_read_lock", "srcu_waits", lookup=lookup_srcu_unlocked,
           release=release_nothing),
)
