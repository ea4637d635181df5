"""srcu: Zijlstra's design as Wilcox restated it (2020-02-06), faults inside srcu_read_lock(&vma_srcu)."""

from __future__ import annotations

from policies.mm import (
    VM_FAULT_SIGSEGV,
    Vmf,
)
from policies.mm.checks import (
    PTE_AFTER_ZAP,
)
from policies.scenario import World, mutant
from policies.vma_lookup.common import VmaPolicy, handle_with, new_vma_plain
from policies.vma_lookup.mmap_lock import (
    fault_mmap_lock,
    fault_or_fall_back,
    mmap_locked,
    mmap_write_downgrade_plain,
    mmap_write_unlock_plain,
    munmap_locked,
    must_fall_back,
)
from shm.checks import SCHED_LIVELOCK, SLAB_UAF, WATCHDOG_STALL


def lookup_srcu(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    """srcu_read_lock(&vma_srcu), then walk the index: the index is RCU-safe (its arrays are
    freed after an RCU grace period), the VMA it yields is kept by SRCU."""
    srcu = w.srcu[0]
    idx = srcu.read_lock(w.cpu)
    w.rcu.read_lock(w.cpu)
    vma = w.mm.vma_lookup(w.cpu, mm, vpn)
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
    vma = w.mm.vma_lookup(w.cpu, mm, vpn)
    w.rcu.read_unlock(w.cpu)
    return Vmf(mm, vma, vpn, write, "none") if vma else None


def release_nothing(w: World, vmf: Vmf) -> None:
    pass


def fault_srcu(w: World, mm: int, vpn: int, write: bool) -> int:
    return fault_or_fall_back(w, mm, vpn, write, w.policy.lookup(w, mm, vpn, write))


def fault_srcu_mmap_lock_inside(w: World, mm: int, vpn: int, write: bool) -> int:
    """DELIBERATELY BROKEN: the fallback takes mmap_lock still inside srcu_read_lock.

    Wilcox's prototype order (2020-02-06): srcu_read_lock(&vma_srcu), then
    down_read(mmap_sem) where the fault must fall back.  A munmap that holds
    mmap_lock for write waits in synchronize_srcu() for this reader, which
    waits for mmap_lock: neither moves.  Must hang (sched.livelock under
    control: the grace period polls; watchdog.stall free-running)."""
    vmf = lookup_srcu(w, mm, vpn, write)
    if vmf is None:
        return VM_FAULT_SIGSEGV
    if must_fall_back(w, mm, vmf):
        try:
            w.count("fallbacks")
            return fault_mmap_lock(w, mm, vpn, write)
        finally:
            release_srcu(w, vmf)
    return handle_with(w, vmf)


def synchronize_vma_srcu(w: World, mm: int) -> None:
    """munmap: after the VMA left the index, wait for every fault that could have found it;
    one grace period covers every VMA of the munmap, which then frees them at once."""
    srcu = w.srcu[0]
    if srcu.readers_active_idx(0) or srcu.readers_active_idx(1):
        w.count("srcu_waits")
    srcu.synchronize(w.cpu)
    w.count("munmap_gps")


def fork_synchronize_srcu(w: World, mm: int) -> None:
    """fork: the mm is marked forking; wait for every fault that entered before and may not
    have seen it (a write fault checks it inside its read section and falls back to mmap_lock)."""
    w.srcu[0].synchronize(w.cpu)
    w.count("fork_gps")


srcu = VmaPolicy(
    "srcu",
    doc="Zijlstra: faults inside srcu_read_lock(&vma_srcu); munmap removes, synchronize_srcu, then frees",
    lookup=lookup_srcu,
    release=release_srcu,
    fault=fault_srcu,
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_plain,
    after_unpublish=synchronize_vma_srcu,
    dup_begin=fork_synchronize_srcu,
    write_unlock=mmap_write_unlock_plain,
    write_downgrade=mmap_write_downgrade_plain,
)


MUTANTS = (
    mutant(
        srcu,
        "fault_without_srcu",
        (SLAB_UAF, PTE_AFTER_ZAP),
        "Wilcox 2020-02-06: 'at the beginning of a page fault call srcu_read_lock(&vma_srcu)'",
        "the fault path skips srcu_read_lock",
        "srcu_waits",
        lookup=lookup_srcu_unlocked,
        release=release_nothing,
    ),
    mutant(
        srcu,
        "fallback_inside_srcu",
        (SCHED_LIVELOCK, WATCHDOG_STALL),
        "Wilcox 2020-02-06: 'srcu_read_lock(&vma_srcu)' at the beginning of the fault, the mmap_sem taken "
        "inside it where the fault falls back, against munmap's synchronize_srcu() under the write lock",
        "a fault falls back to mmap_lock while still inside srcu_read_lock",
        "fallbacks",
        fault=fault_srcu_mmap_lock_inside,
    ),
)
