"""srcu: faults inside srcu_read_lock(&vma_srcu), as Wilcox restated Zijlstra's design (2020-02-06),
and as Zijlstra answered (2020-02-07): the VMA freed by call_srcu, the fault validated under the ptl."""

from __future__ import annotations

from dataclasses import replace

from policies.mm import (
    FAULT_FLAG_SPECULATIVE,
    VM_FAULT_RETRY,
    VM_FAULT_SIGSEGV,
    Vmf,
)
from policies.mm.checks import (
    PTE_AFTER_ZAP,
)
from policies.scenario import World, mutant
from policies.vma_lookup.common import VmaPolicy, handle_with, new_vma_plain, vm_area_free_rcu
from policies.vma_lookup.mmap_lock import (
    fault_mmap_lock,
    fault_or_fall_back,
    mmap_locked,
    mmap_write_downgrade_plain,
    mmap_write_unlock_plain,
    munmap_locked,
    must_fall_back,
    vma_free_rcu,
)
from policies.vma_lookup.speculative import speculative, spf_validate
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


def srcu_spf_fault(w: World, mm: int, vpn: int, write: bool) -> int:
    """Zijlstra (2020-02-07): "SRCU only ensures the VMA object remains extant, it does not
    prevent modification of it ... what we serialize on is the (split) ptlock": inside
    srcu_read_lock, look the VMA up and sample its sequence; walk the tables with interrupts
    off, take the ptl and "verify the vma (again) and install the PTE.  If anything goes
    wrong, we bail" to mmap_lock, outside the SRCU section."""
    m, cpu, rcu = w.mm, w.cpu, w.rcu
    ssp = w.srcu[0]
    idx = ssp.read_lock(cpu)
    try:
        rcu.read_lock(cpu)
        vma = m.vma_lookup(cpu, mm, vpn)
        rcu.read_unlock(cpu)
        seq = m.vma_field(cpu, vma, "vm_seq", "srcu_spf: the VMA's sequence") if vma else 1
        if not seq & 1 and (not write or w.mem.load32(m.vma_off(vma, "anon_vma"))):
            vmf = Vmf(mm, vma, vpn, write, "srcu_spf", validate=spf_validate(w, seq), flags=FAULT_FLAG_SPECULATIVE)
            cpu.window("spf:after-lookup")
            ret = m.handle_mm_fault(cpu, vmf)
            if ret != VM_FAULT_RETRY:
                w.count("spf")
                return ret
    finally:
        ssp.read_unlock(cpu, idx)
    w.count("fallbacks")
    return fault_mmap_lock(w, mm, vpn, write)


def vma_free_srcu(cpu, vma: int) -> None:
    """Zijlstra (2020-02-06): "call_srcu(), and the (s)rcu callback will then fput() and such
    things": munmap does not wait for the faults; the VMA goes once they have left."""
    cpu.ctx.srcu[0].call(cpu, vm_area_free_rcu, vma)
    cpu.ctx.count("srcu_frees")


srcu_spf = replace(
    speculative,
    name="srcu_spf",
    doc="Zijlstra: faults inside SRCU validated under the ptl; munmap zaps and frees the VMA by call_srcu",
    fault=srcu_spf_fault,
    vma_free=vma_free_srcu,
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
    mutant(
        srcu_spf,
        "vma_freed_after_rcu",
        SLAB_UAF,
        "Zijlstra 2020-02-06: 'call_srcu(), and the (s)rcu callback will then fput()': the fault is an SRCU "
        "reader, not an RCU one",
        "munmap frees the VMA by call_rcu, whose grace period does not wait for a fault inside SRCU",
        "spf_bail",
        vma_free=vma_free_rcu,
    ),
)
