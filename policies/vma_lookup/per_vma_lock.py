"""per_vma_lock: what landed in 6.4, lock_vma_under_rcu, vma_start_write and mm_lock_seq."""

from __future__ import annotations

from policies.mm import (
    VM_DETACHED,
    VM_FAULT_RETRY,
    Vmf,
)
from policies.mm.checks import (
    ANON_VMA_UNLOCKED,
    LOST_WRITE,
    PTE_AFTER_ZAP,
    PTE_OUTSIDE_VMA,
)
from policies.scenario import World, mutant
from policies.vma_lookup.common import VmaPolicy
from policies.vma_lookup.mmap_lock import (
    fault_mmap_lock,
    lookup_mmap_lock,
    mmap_locked,
    munmap_locked,
    release_mmap_lock,
)
from shm.slab import SLOT_MASK


def vma_start_read(w: World, mm: int, vma: int) -> bool:
    """vma_start_read(): fails while the VMA is write-locked in this mmap_lock cycle."""
    m, mem = w.mm, w.mem
    seq_off = m.vma_off(vma, "vm_lock_seq")
    mm_seq = m.mm_off(mm, "mm_lock_seq")
    if mem.load32(seq_off) == mem.load32(mm_seq):
        return False
    lock = m.vma_lock(vma)
    if not lock.down_read_trylock(w.cpu):
        return False
    if mem.load32(seq_off) == mem.load32(mm_seq):
        lock.up_read(w.cpu)
        return False
    return True


def vma_start_write(w: World, mm: int, vma: int) -> None:
    """vma_start_write(): mmap_lock is held for write; wait out readers, mark the VMA."""
    m, mem = w.mm, w.mem
    mm_seq = mem.load32(m.mm_off(mm, "mm_lock_seq"))
    seq_off = m.vma_off(vma, "vm_lock_seq")
    if mem.load32(seq_off) == mm_seq:
        return
    lock = m.vma_lock(vma)
    lock.down_write(w.cpu)
    mem.store32(seq_off, mm_seq)
    lock.up_write(w.cpu)


def lock_vma_under_rcu(w: World, mm: int, vpn: int, *, check: bool = True, anon_first: bool = False) -> int:
    """lock_vma_under_rcu(): the VMA read-locked, or 0 to fall back to mmap_lock.

    The VMA cache is SLAB_TYPESAFE_BY_RCU, so the object found may have been
    freed and reused by the time it is locked: check it is attached, of this
    mm and covers the address (mm/memory.c, 6.15).  A VMA without anon_vma
    falls back too, checked under the lock (657b5146955e): a fault never
    runs anon_vma_prepare under the VMA lock alone."""
    m, cpu, rcu, mem = w.mm, w.cpu, w.rcu, w.mem
    rcu.read_lock(cpu)
    vma = m.vma_lookup(cpu, mm, vpn)
    if not vma:
        rcu.read_unlock(cpu)
        return 0
    if anon_first and not mem.load32(m.vma_off(vma, "anon_vma")):
        rcu.read_unlock(cpu)
        w.count("vma_no_anon")
        return 0
    cpu.window("lock_vma_under_rcu:found")
    if not vma_start_read(w, mm, vma):
        rcu.read_unlock(cpu)
        w.count("vma_lock_busy")
        if mem.load32(m.mm_off(mm, "forking")):
            w.count("fork_locked_vma")
        return 0
    vma = m.vma_cache.ref(vma & SLOT_MASK)
    if check:
        bad = (
            mem.load32(m.vma_off(vma, "vm_flags")) & VM_DETACHED
            or mem.load32(m.vma_off(vma, "vm_mm")) != m.mm_id(mm)
            or not mem.load32(m.vma_off(vma, "vm_start")) <= vpn < mem.load32(m.vma_off(vma, "vm_end"))
        )
        if bad:
            m.vma_lock(vma).up_read(cpu)
            rcu.read_unlock(cpu)
            w.count("vma_lock_miss")
            return 0
    if not anon_first and not mem.load32(m.vma_off(vma, "anon_vma")):
        m.vma_lock(vma).up_read(cpu)
        rcu.read_unlock(cpu)
        w.count("vma_no_anon")
        return 0
    rcu.read_unlock(cpu)
    return vma


def _per_vma_fault(w: World, mm: int, vpn: int, write: bool, *, check: bool = True, anon_first: bool = False) -> int:
    vma = lock_vma_under_rcu(w, mm, vpn, check=check, anon_first=anon_first)
    if vma:
        cpu = w.cpu
        cpu.window("fault:holding-vma-lock")
        try:
            ret = w.mm.handle_mm_fault(cpu, Vmf(mm, vma, vpn, write, "vma_lock"))
        finally:
            w.mm.vma_lock(vma).up_read(cpu)
        if ret != VM_FAULT_RETRY:
            w.count("vma_locked")
            return ret
    w.count("fallbacks")
    return fault_mmap_lock(w, mm, vpn, write)


def fault_no_recheck(w: World, mm: int, vpn: int, write: bool) -> int:
    """DELIBERATELY BROKEN: the VMA found under RCU is used without checking, once locked, that
    it is still of this mm and covers the address (a typesafe slot may have been reused).
    Must trip mm.pte-outside-vma (the slot holds another VMA by then) or mm.pte-after-zap (it
    holds the detached one still, which munmap zapped)."""
    return _per_vma_fault(w, mm, vpn, write, check=False)


def fault_anon_vma_first(w: World, mm: int, vpn: int, write: bool) -> int:
    """DELIBERATELY BROKEN: lock_vma_under_rcu checks anon_vma before vma_start_read, as before
    657b5146955e; the slot may be reused by a VMA without one by the time it is locked, and the
    fault runs anon_vma_prepare under the VMA lock alone.  Must trip mm.anon-vma-unlocked."""
    return _per_vma_fault(w, mm, vpn, write, anon_first=True)


def new_vma_locked(w: World, mm: int, start: int, end: int, flags: int) -> int | None:
    """A new VMA is write-locked (vm_lock_seq = mm_lock_seq) and detached until published."""
    vma = w.mm.vm_area_alloc(w.cpu, mm, start, end, flags)
    if vma is not None:
        w.mem.store32(w.mm.vma_off(vma, "vm_lock_seq"), w.mem.load32(w.mm.mm_off(mm, "mm_lock_seq")))
    return vma


def mmap_write_unlock(w: World, mm: int) -> None:
    """mmap_write_unlock(): vma_end_write_all() bumps mm_lock_seq, unlocking every VMA at once."""
    w.mem.fetch_add32(w.mm.mm_off(mm, "mm_lock_seq"), 1)
    w.mm.mmap_lock(mm).up_write(w.cpu)


def mmap_write_downgrade(w: World, mm: int) -> None:
    """mmap_write_downgrade(): vma_end_write_all() first, as mmap_write_unlock does."""
    w.mem.fetch_add32(w.mm.mm_off(mm, "mm_lock_seq"), 1)
    w.mm.mmap_lock(mm).downgrade_write(w.cpu)


def vma_free_after_readers(cpu, vma: int) -> None:
    """Free a detached VMA once no fault holds its lock: after the downgrade, lock_vma_under_rcu
    may read-lock it (the VMA is no longer write-locked) before it sees it detached; the slot
    must not be reused under that reader (6.15's vma_mark_detached waits for them)."""
    m = cpu.ctx.mm
    lock = m.vma_lock(vma)
    lock.down_write(cpu)
    lock.up_write(cpu)
    m.vm_area_free(cpu, vma)


per_vma_lock = VmaPolicy(
    "per_vma_lock",
    doc="6.4+: lock_vma_under_rcu with vm_lock_seq vs mm_lock_seq, typesafe VMA slots, mmap_lock fallback",
    lookup=lookup_mmap_lock,
    release=release_mmap_lock,
    fault=_per_vma_fault,
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_locked,
    before_unmap=vma_start_write,
    write_unlock=mmap_write_unlock,
    write_downgrade=mmap_write_downgrade,
    dup_lock_vma=vma_start_write,
    vma_free=vma_free_after_readers,
    typesafe_vmas=True,
)


MUTANTS = (
    mutant(
        per_vma_lock,
        "fork_without_vma_start_write",
        LOST_WRITE,
        "fb49c455323f 'fork: lock VMAs of the parent process when forking' (the per-VMA lock's fork race)",
        "dup_mmap does not vma_start_write the parent's VMAs while faults run under the VMA lock",
        "fork_locked_vma",
        dup_lock_vma=None,
    ),
    mutant(
        per_vma_lock,
        "typesafe_no_recheck",
        (PTE_OUTSIDE_VMA, PTE_AFTER_ZAP),
        "mm/memory.c lock_vma_under_rcu (SLAB_TYPESAFE_BY_RCU): check vm_mm and the range after locking",
        "a reused VMA slot is used without checking vm_mm and the range after taking the lock",
        "vma_lock_miss",
        fault=fault_no_recheck,
    ),
    mutant(
        per_vma_lock,
        "anon_vma_checked_before_lock",
        ANON_VMA_UNLOCKED,
        "657b5146955e 'mm: lock_vma_under_rcu() must check vma->anon_vma under vma lock'",
        "lock_vma_under_rcu checks anon_vma before taking the VMA lock: the slot may be reused by then",
        "vma_no_anon",
        fault=fault_anon_vma_first,
    ),
)
