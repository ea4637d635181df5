"""What every vma_lookup policy shares: the VmaPolicy ops table and the VMA-tree helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policies.mm import (
    MAX_VMAS,
    RESERVED,
    VM_BABY,
    VM_FAULT_SIGSEGV,
    VM_READ,
    VM_WRITE,
    Vmf,
)
from policies.mm.policy import MmPolicy
from policies.scenario import World
from shm import rcu_callback

TASK_MM = (0, 0, 1, 2)
MAX_LEN = 16
GIANT = 32
FAULT_TRIES = 4


@rcu_callback("vma_lookup: vm_area_free")
def vm_area_free_rcu(cpu, vma: int) -> None:
    cpu.ctx.mm.vm_area_free(cpu, vma)


@dataclass(frozen=True, kw_only=True)
class VmaPolicy(MmPolicy):
    """How a fault pins its VMA (`lookup`/`release`, or a whole `fault`; `fallback`: the fault under
    mmap_lock a lockless one falls back to, None for fault_mmap_lock; `lookup_locked`: the VMA
    under mmap_lock for read, as pin_user_pages takes it, released by release_mmap_lock, None
    for lookup_mmap_lock), and how VMAs change."""

    lookup: Callable[[World, int, int, bool], Vmf | None]
    release: Callable[[World, Vmf], None]
    fault: Callable[[World, int, int, bool], int]
    fallback: Callable[[World, int, int, bool], int] | None = None
    lookup_locked: Callable[[World, int, int, bool], Vmf | None] | None = None
    mmap: Callable[[World, int, int, int, bool], int | None]
    munmap: Callable[[World, int, int, int], bool]
    new_vma: Callable[[World, int, int, int, int], int | None]
    before_unmap: Callable[[World, int, int], None] | None = None
    after_unpublish: Callable[[World, int], None] | None = None
    write_unlock: Callable[[World, int], None]
    write_downgrade: Callable[[World, int], None]
    dup_begin: Callable[[World, int], None] | None = None
    dup_lock_vma: Callable[[World, int, int], None] | None = None
    dup_unlock_vma: Callable[[World, int, int], None] | None = None


# -- helpers every policy shares --------------------------------------------------


def entries_around(entries, start: int, end: int) -> tuple[int, int]:
    """floor and ceiling for free_pgtables: the gap [start, end) lies in, between its neighbours."""
    floor = max((e for s, e, _ in entries if e <= start), default=0)
    ceiling = min((s for s, e, _ in entries if s >= end), default=1 << 30)
    return floor, ceiling


def split_range(w: World, mm: int, entries, start: int, end: int, new_vma, room: int = 1):
    """The entries left after removing [start, end), with new VMAs for the parts that remain.

    (kept, removed) or None: a RESERVED or BABY range overlaps, or there is
    no memory for the remainders (__split_vma), or no `room` left in the
    index for what the caller adds (ENOMEM: sysctl_max_map_count)."""
    m, cpu = w.mm, w.cpu
    kept, removed, made = [], [], []
    for s, e, v in entries:
        if e <= start or s >= end:
            kept.append((s, e, v))
            continue
        if v == RESERVED:
            break
        flags = m.vma_field(cpu, v, "vm_flags", "__split_vma")
        if flags & VM_BABY:
            break
        anon = m.vma_field(cpu, v, "anon_vma", "__split_vma")
        for rs, re in ((s, start), (end, e)):
            if rs < re:
                nv = new_vma(w, mm, rs, re, flags & (VM_READ | VM_WRITE))
                if nv is None:
                    break
                w.mem.store32(m.vma_off(nv, "anon_vma"), anon)
                made.append(nv)
                kept.append((rs, re, nv))
        else:
            removed.append(v)
            continue
        break
    else:
        if len(kept) <= MAX_VMAS - room:
            return kept, removed
    for nv in made:
        m.vm_area_free(cpu, nv)
    return None


def new_vma_plain(w: World, mm: int, start: int, end: int, flags: int) -> int | None:
    return w.mm.vm_area_alloc(w.cpu, mm, start, end, flags)


def unmap_region(w: World, mm: int, start: int, end: int, removed, floor: int, ceiling: int) -> None:
    """unmap_region(): zap [start, end), free the tables of the gap, flush, free the pages.

    The VMAs are marked zapped table by table as the zap passes (under each
    ptl): a fault that installs a PTE for them in a table the zap has
    passed leaves a PTE behind its VMA, which the model reports."""
    m, cpu = w.mm, w.cpu
    tlb = m.tlb_gather_mmu(cpu, mm)
    m.zap_page_range(cpu, tlb, start, end, vmas=removed)
    if floor < ceiling:
        m.free_pgtables(cpu, mm, start, end, max(floor, 0), min(ceiling, m.geometry.pages))
    m.tlb_finish_mmu(cpu, tlb)


def clamp_range(w: World, vpn: int, length: int) -> tuple[int, int]:
    return vpn, min(vpn + 1 + length, w.mm.geometry.pages)


def handle_with(w: World, vmf: Vmf | None) -> int:
    if vmf is None:
        return VM_FAULT_SIGSEGV
    policy: VmaPolicy = w.policy
    try:
        return w.mm.handle_mm_fault(w.cpu, vmf)
    finally:
        policy.release(w, vmf)
