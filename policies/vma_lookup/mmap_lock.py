"""mmap_lock: the baseline, mmap_lock for read in faults and GUP, for write in mmap/munmap/fork
(munmap downgrades it to read for the teardown); and rcu_table_free, the baseline on an
architecture whose TLB flush is a broadcast, with page tables freed by RCU.

Their mutants: page tables freed before the IPI fast GUP waits for, or right after a
broadcast TLBI; VMAs never freed; and the model's own functions broken one at a time
(policies/mm/broken.py).
"""

from __future__ import annotations

from dataclasses import replace

from policies.mm import (
    MAX_VMAS,
    VM_DETACHED,
    VM_FAULT_SIGSEGV,
    VM_READ,
    VM_WRITE,
    Vmf,
)
from policies.mm.checks import (
    WALK_FREED_TABLE,
)
from policies.mm.mm import BroadcastTlbiModel
from policies.scenario import World, mutant
from policies.vma_lookup.common import (
    VmaPolicy,
    entries_around,
    handle_with,
    new_vma_plain,
    split_range,
    unmap_region,
    vm_area_free_rcu,
)
from shm.checks import SLAB_LEAK


def lookup_mmap_lock(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    lock = w.mm.mmap_lock(mm)
    lock.down_read(w.cpu)
    vma = w.mm.vma_lookup(w.cpu, mm, vpn)
    if not vma:
        lock.up_read(w.cpu)
        return None
    return Vmf(mm, vma, vpn, write, "mmap_lock")


def release_mmap_lock(w: World, vmf: Vmf) -> None:
    w.mm.mmap_lock(vmf.mm).up_read(w.cpu)


def fault_mmap_lock(w: World, mm: int, vpn: int, write: bool) -> int:
    """do_user_addr_fault(): mmap_read_lock, find_vma, handle_mm_fault, mmap_read_unlock."""
    cpu = w.cpu
    lock = w.mm.mmap_lock(mm)
    lock.down_read(cpu)
    try:
        vma = w.mm.vma_lookup(cpu, mm, vpn)
        return w.mm.handle_mm_fault(cpu, Vmf(mm, vma, vpn, write, "mmap_lock")) if vma else VM_FAULT_SIGSEGV
    finally:
        lock.up_read(cpu)


def must_fall_back(w: World, mm: int, vmf: Vmf) -> bool:
    """A lockless write fault must take mmap_lock instead: it would allocate the VMA's anon_vma
    (__anon_vma_prepare needs mmap_lock: every lockless fault that landed falls back so, SPF and
    per-VMA locks, 657b5146955e), or the mm is forking (checked after the VMA was pinned: the
    fork waits for the faults that pinned it before, as vma_start_write does, fb49c455323f)."""
    m = w.mm
    return vmf.write and (
        not w.mem.load32(m.vma_off(vmf.vma, "anon_vma")) or bool(w.mem.load32(m.mm_off(mm, "forking")))
    )


def fault_or_fall_back(w: World, mm: int, vpn: int, write: bool, vmf: Vmf | None) -> int:
    """Handle the fault on the VMA the policy pinned, or release it and fault under mmap_lock
    (must_fall_back), as the policy's `fallback` does (by default fault_mmap_lock)."""
    if vmf is None:
        return VM_FAULT_SIGSEGV
    policy: VmaPolicy = w.policy
    if must_fall_back(w, mm, vmf):
        policy.release(w, vmf)
        w.count("fallbacks")
        return (policy.fallback or fault_mmap_lock)(w, mm, vpn, write)
    return handle_with(w, vmf)


def vma_free_forgotten(cpu, vma: int) -> None:
    """DELIBERATELY BROKEN: a VMA taken out of the tree is never given back to its cache.

    The sweep finds a vm_area_struct no live mm refers to (slab.leak)."""


def vma_free_rcu(cpu, vma: int) -> None:
    cpu.ctx.rcu.call(cpu, vm_area_free_rcu, vma)


def _detach_under_write(w: World, mm: int, entries, start: int, end: int) -> tuple[list, list] | None:
    """Take [start, end) out of the index; mmap_lock is held for write.  (kept, removed), or
    None on ENOMEM.

    The policy's hooks say what its readers need: `before_unmap` on each VMA
    before it leaves the index (vma_start_write, vm_write_begin),
    `after_unpublish` once they are out (synchronize_srcu)."""
    m, cpu, policy = w.mm, w.cpu, w.policy
    r = split_range(w, mm, entries, start, end, policy.new_vma)
    if r is None:
        w.count("enomem")
        return None
    kept, removed = r
    if not removed:
        return kept, removed
    for v in removed:
        if policy.before_unmap is not None:
            policy.before_unmap(w, mm, v)
        m.vma_set_flags(v, VM_DETACHED)
    m.index_publish(cpu, mm, kept)
    cpu.window("munmap:unpublished")
    if policy.after_unpublish is not None:
        policy.after_unpublish(w, mm)
    return kept, removed


def _tear_down(w: World, mm: int, start: int, end: int, kept, removed) -> None:
    """Zap, free the gap's tables, flush, free the VMAs: mmap_lock is held, for write or read."""
    floor, ceiling = entries_around(kept, start, end)
    unmap_region(w, mm, start, end, removed, floor, ceiling)
    for v in removed:
        w.mm.remove_vma(w.cpu, v)


def mmap_write_lock(w: World, mm: int) -> None:
    w.mm.mmap_lock(mm).down_write(w.cpu)


def mmap_write_unlock_plain(w: World, mm: int) -> None:
    w.mm.mmap_lock(mm).up_write(w.cpu)


def mmap_locked(w: World, mm: int, start: int, npages: int, fixed: bool) -> int | None:
    """do_mmap() under mmap_lock for write; MAP_FIXED unmaps what was there first.  The new
    mapping's first page, or None if nothing was mapped."""
    m, cpu, policy = w.mm, w.cpu, w.policy
    mmap_write_lock(w, mm)
    try:
        entries = m.index_entries(mm)
        end = min(start + npages, m.geometry.pages)
        if fixed:
            r = _detach_under_write(w, mm, entries, start, end)
            if r is None:
                return None
            entries = r[0]
            if r[1]:
                _tear_down(w, mm, start, end, *r)
        else:
            start = m.get_unmapped_area(entries, npages, start)
            if start < 0 or len(entries) >= MAX_VMAS:
                w.count("enomem")
                return None
            end = start + npages
        vma = policy.new_vma(w, mm, start, end, VM_READ | VM_WRITE)
        if vma is None:
            w.count("enomem")
            return None
        m.index_publish(cpu, mm, entries + [(start, end, vma)])
        w.count("mmaps")
        return start
    finally:
        policy.write_unlock(w, mm)


def munmap_locked(w: World, mm: int, start: int, end: int) -> bool:
    """do_munmap() as mm/vma.c does it: the VMAs detached under mmap_lock for write, then the
    lock downgraded for the zap, free_pgtables and the flush (vms_complete_munmap_vmas), so
    that faults elsewhere in the mm run beside the teardown.  A new VMA cannot appear beside
    the gap meanwhile: mmap needs the lock for write.  False: -ENOMEM, nothing unmapped."""
    mmap_write_lock(w, mm)
    try:
        r = _detach_under_write(w, mm, w.mm.index_entries(mm), start, end)
    except BaseException:
        w.policy.write_unlock(w, mm)
        raise
    if r is None or not r[1]:
        w.policy.write_unlock(w, mm)
        return r is not None
    w.policy.write_downgrade(w, mm)
    try:
        w.cpu.window("munmap:downgraded")
        _tear_down(w, mm, start, end, *r)
        w.count("munmaps")
        return True
    finally:
        w.mm.mmap_lock(mm).up_read(w.cpu)


def mmap_write_downgrade_plain(w: World, mm: int) -> None:
    w.mm.mmap_lock(mm).downgrade_write(w.cpu)


def pte_free_without_ipi(cpu, mm: int, floor: int, ceiling: int, tables) -> None:
    """DELIBERATELY BROKEN: frees the unhooked page tables at once, before the flush IPI.

    A fast-GUP walker with interrupts off that read the pmd entry before it
    was cleared still walks the table (mm/mmu_gather.c: tlb_remove_table_sync_one
    exists so that this cannot happen).  Must produce a use-after-free."""
    model = cpu.ctx.mm
    model.pte_free(cpu, mm, tables)
    cpu.window("pte_free:before-the-flush")
    model.flush_tlb_mm_range(cpu, mm, floor, ceiling, freed_tables=True)


mmap_lock = VmaPolicy(
    "mmap_lock",
    doc="the baseline: mmap_lock read for faults and GUP, write for mmap/munmap/fork (munmap downgrades)",
    lookup=lookup_mmap_lock,
    release=release_mmap_lock,
    fault=fault_mmap_lock,
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_plain,
    write_unlock=mmap_write_unlock_plain,
    write_downgrade=mmap_write_downgrade_plain,
)


def tlb_remove_table(cpu, mm: int, floor: int, ceiling: int, tables) -> None:
    cpu.ctx.mm.tlb_remove_table(cpu, mm, floor, ceiling, tables)


rcu_table_free = replace(
    mmap_lock,
    name="rcu_table_free",
    doc="the baseline on a broadcast-TLBI arch: page tables freed by RCU, fast GUP held off by irqs off alone",
    model=BroadcastTlbiModel,
    remove_tables=tlb_remove_table,
)


def pte_free_after_tlbi(cpu, mm: int, floor: int, ceiling: int, tables) -> None:
    """DELIBERATELY BROKEN: frees the unhooked tables right after the broadcast TLBI, as a kernel
    whose flush is an IPI may.

    A broadcast TLBI does not interrupt anyone: the fast-GUP walker that
    read the pmd entry before it was cleared, with interrupts off, is still
    in the table (mm/mmu_gather.c: hence tlb_remove_table_sync_one's IPI, or
    the RCU grace period).  Must produce a use-after-free."""
    model = cpu.ctx.mm
    model.flush_tlb_mm_range(cpu, mm, floor, ceiling, freed_tables=True)
    cpu.window("pte_free:after-the-tlbi")
    model.pte_free(cpu, mm, tables)


MUTANTS = (
    mutant(
        rcu_table_free,
        "tables_freed_after_tlbi",
        WALK_FREED_TABLE,
        "mm/mmu_gather.c tlb_remove_table_sync_one(): 'semi RCU' for architectures whose TLB flush is not "
        "an IPI (fast GUP walks with irqs off)",
        "page tables freed right after a broadcast TLBI, with no grace period and no IPI",
        "gup_fast_unhooked",
        remove_tables=pte_free_after_tlbi,
    ),
    mutant(
        mmap_lock,
        "free_pgtables_no_ipi",
        WALK_FREED_TABLE,
        "mm/mmu_gather.c: tlb_remove_table_sync_one (a table is freed only after the IPI that fast GUP, "
        "walking with interrupts off, holds back)",
        "page tables freed before the flush IPI, while fast GUP walks them with irqs off",
        "ipi_waits",
        remove_tables=pte_free_without_ipi,
    ),
    # A VMA never freed; the model's own functions broken one at a time are in model.py.
    mutant(
        mmap_lock,
        "vma_never_freed",
        SLAB_LEAK,
        "mm/vma.c remove_vma(): vm_area_free() of every VMA munmap took out",
        "a VMA munmap took out of the tree is never freed",
        "munmaps",
        vma_free=vma_free_forgotten,
    ),
)
