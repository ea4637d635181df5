"""vma_lookup: "Splitting the mmap_sem" (Matthew Wilcox and others, linux-mm, 2019-12-03 to 2020-02-07).

Page faults look a VMA up and must keep it from going away while they
sleep; mmap, munmap and MAP_FIXED replace VMAs and tear down what they
mapped.  Each policy answers "how does a fault pin its VMA, and how does an
unmapper wait for it" differently:

  mmap_lock         the baseline: mmap_lock read for faults, write for changes.
  rcu_vma_refcount  Wilcox (2019-12-03): lookup under RCU, a per-VMA refcount,
                    munmap waits for it, synchronize_rcu, then frees and
                    flushes; BABY/ZOMBIE (Glisse, 2019-12-05) and the ZERO
                    entry (Wilcox, 2019-12-09); ->map_pages under RCU for a
                    giant VMA; synchronize_rcu skipped when mm_users <= 1
                    (Wilcox, 2019-12-13).
  srcu              Zijlstra/Wilcox (2020-02-06): faults inside
                    srcu_read_lock(&vma_srcu); munmap removes the VMA,
                    synchronize_srcu(), then tears down and frees.
  speculative       Dufour's SPF (2020-02-07): a lockless lookup, the VMA's
                    seqcount sampled and validated again under the ptl before
                    the PTE is installed; mmap_lock on a mismatch.
  per_vma_lock      what landed in 6.4: lock_vma_under_rcu (vm_lock_seq vs
                    mm_lock_seq), vma_start_write, mm_lock_seq bumped by
                    mmap_write_unlock; VMAs SLAB_TYPESAFE_BY_RCU, so a
                    lookup checks vm_mm and the range after locking.

The model (page tables, TLBs, faults, zap, fork) is `policies.mm`; this
module holds only what the mechanisms change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies import register
from policies.mm import (
    MAX_VMAS,
    MM_EXITED,
    MM_LIVE,
    RESERVED,
    VM_BABY,
    VM_DETACHED,
    VM_FAULT_OK,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    VM_FAULT_SIGSEGV,
    VM_READ,
    VM_WRITE,
    VM_ZOMBIE,
    Geometry,
    MmModel,
    Vmf,
    broken,
    sweep,
)
from policies.mm.checks import (
    ACCESS_FREED_PAGE,
    BAD_PAGE_REFS,
    BAD_PGTABLE_BYTES,
    BAD_RSS,
    COW_WRITE_SHARED,
    FORK_NO_ANON_VMA,
    FREE_MAPPED_TABLE,
    PTE_AFTER_ZAP,
    PTE_IN_NO_VMA,
    PTE_OUTSIDE_VMA,
    RMAP_UNDERFLOW,
    STALE_TLB,
    WALK_FREED_TABLE,
)
from policies.scenario import Arg, Needs, Operation, Policy, Region, Scenario, World, mutant
from shm import rcu_callback, wait_var_event, wake_up_var
from shm.checks import POOL_LEAK, SLAB_LEAK, SLAB_UAF
from shm.slab import SLOT_MASK

MAX_MMS = 3
TASK_MM = (0, 0, 1, 2)
MAX_LEN = 16
GIANT = 32
FAULT_TRIES = 4


@rcu_callback("vma_lookup: vm_area_free")
def vm_area_free_rcu(cpu, vma: int) -> None:
    cpu.ctx.mm.vm_area_free(cpu, vma)


@dataclass(frozen=True, kw_only=True)
class VmaPolicy(Policy):
    """How a fault pins its VMA (`lookup`/`release`, or a whole `fault`), and how VMAs change."""

    lookup: Callable[[World, int, int, bool], Vmf | None]
    release: Callable[[World, Vmf], None]
    fault: Callable[[World, int, int, bool], int]
    mmap: Callable[[World, int, int, int, bool], None]
    munmap: Callable[[World, int, int, int], None]
    new_vma: Callable[[World, int, int, int, int], int | None]
    before_unmap: Callable[[World, int, int], None] | None = None
    after_unpublish: Callable[[World, int], None] | None = None
    free_tables: bool = True
    remove_tables: Callable | None = None
    write_unlock: Callable[[World, int], None]
    dup_lock_vma: Callable[[World, int, int], None] | None = None
    vma_free: Callable[[Any, int], None]
    typesafe_vmas: bool = False
    model: type[MmModel] = MmModel


# -- helpers every policy shares --------------------------------------------------

def _entries_around(entries, start: int, end: int) -> tuple[int, int]:
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
    gather: list[int] = []
    m.zap_page_range(cpu, mm, start, end, gather, vmas=removed)
    policy: VmaPolicy = w.policy
    if policy.free_tables and floor < ceiling:
        m.free_pgtables(cpu, mm, start, end, max(floor, 0), min(ceiling, m.geometry.pages), policy.remove_tables)
    m.tlb_finish_mmu(cpu, mm, start, end, gather)


def _range(w: World, vpn: int, length: int) -> tuple[int, int]:
    return vpn, min(vpn + 1 + length, w.mm.geometry.pages)


def handle_with(w: World, vmf: Vmf | None) -> int:
    if vmf is None:
        return VM_FAULT_SIGSEGV
    policy: VmaPolicy = w.policy
    try:
        return w.mm.handle_mm_fault(w.cpu, vmf)
    finally:
        policy.release(w, vmf)


def fault_generic(w: World, mm: int, vpn: int, write: bool) -> int:
    return handle_with(w, w.policy.lookup(w, mm, vpn, write))


# -- mmap_lock: the baseline ---------------------------------------------------------

def lookup_mmap_lock(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    lock = w.mm.mmap_lock(mm)
    lock.down_read(w.cpu)
    vma = w.mm.find_vma(w.cpu, mm, vpn)
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
        vma = w.mm.find_vma(cpu, mm, vpn)
        return w.mm.handle_mm_fault(cpu, Vmf(mm, vma, vpn, write, "mmap_lock")) if vma else VM_FAULT_SIGSEGV
    finally:
        lock.up_read(cpu)


def vma_free_now(cpu, vma: int) -> None:
    cpu.ctx.mm.vm_area_free(cpu, vma)


def vma_free_forgotten(cpu, vma: int) -> None:
    """DELIBERATELY BROKEN: a VMA taken out of the tree is never given back to its cache.

    The sweep finds a vm_area_struct no live mm refers to (slab.leak)."""


def vma_free_rcu(cpu, vma: int) -> None:
    cpu.ctx.rcu.call(cpu, vm_area_free_rcu, vma)


def _unmap_under_write(w: World, mm: int, entries, start: int, end: int) -> tuple[list, list] | None:
    """Remove [start, end) from the index and tear it down; mmap_lock is held for write.

    The policy's hooks say what its readers need: `before_unmap` on each VMA
    before it leaves the index (vma_start_write, vm_write_begin),
    `after_unpublish` before the zap (synchronize_srcu)."""
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
    floor, ceiling = _entries_around(kept, start, end)
    unmap_region(w, mm, start, end, removed, floor, ceiling)
    for v in removed:
        policy.vma_free(cpu, v)
    return kept, removed


def mmap_write_lock(w: World, mm: int) -> None:
    w.mm.mmap_lock(mm).down_write(w.cpu)


def mmap_write_unlock_plain(w: World, mm: int) -> None:
    w.mm.mmap_lock(mm).up_write(w.cpu)


def mmap_locked(w: World, mm: int, start: int, npages: int, fixed: bool) -> None:
    """do_mmap() under mmap_lock for write; MAP_FIXED unmaps what was there first."""
    m, cpu, policy = w.mm, w.cpu, w.policy
    mmap_write_lock(w, mm)
    try:
        entries = m.index_entries(mm)
        end = min(start + npages, m.geometry.pages)
        if fixed:
            r = _unmap_under_write(w, mm, entries, start, end)
            if r is None:
                return
            entries = r[0]
        else:
            start = m.get_unmapped_area(entries, npages, start)
            if start < 0 or len(entries) >= MAX_VMAS:
                w.count("enomem")
                return
            end = start + npages
        vma = policy.new_vma(w, mm, start, end, VM_READ | VM_WRITE)
        if vma is None:
            w.count("enomem")
            return
        m.index_publish(cpu, mm, entries + [(start, end, vma)])
        w.count("mmaps")
    finally:
        policy.write_unlock(w, mm)


def munmap_locked(w: World, mm: int, start: int, end: int) -> None:
    """do_munmap() under mmap_lock for write."""
    mmap_write_lock(w, mm)
    try:
        r = _unmap_under_write(w, mm, w.mm.index_entries(mm), start, end)
        if r is not None and r[1]:
            w.count("munmaps")
    finally:
        w.policy.write_unlock(w, mm)


def pte_free_without_ipi(cpu, mm: int, floor: int, ceiling: int, tables) -> None:
    """DELIBERATELY BROKEN: frees the unhooked page tables at once, before the flush IPI.

    A fast-GUP walker with interrupts off that read the pmd entry before it
    was cleared still walks the table (mm/mmu_gather.c: tlb_remove_table_sync_one
    exists so that this cannot happen).  Must produce a use-after-free."""
    model = cpu.ctx.mm
    model.pte_free(cpu, mm, tables)
    cpu.window("pte_free:before-the-flush")
    model.flush_tlb_mm_range(cpu, mm, floor, ceiling)


mmap_lock = VmaPolicy(
    "mmap_lock",
    doc="the baseline: mmap_lock read for faults and GUP, write for mmap/munmap/fork",
    lookup=lookup_mmap_lock,
    release=release_mmap_lock,
    fault=fault_mmap_lock,
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_plain,
    write_unlock=mmap_write_unlock_plain,
    vma_free=vma_free_now,
)


# -- rcu_vma_refcount: Wilcox ---------------------------------------------------------

def vma_get(w: World, vma: int) -> bool:
    """refcount_inc_not_zero(&vma->vm_refcnt), on memory RCU keeps: checked like KASAN would."""
    ok = w.mm.vma_refcount(vma).inc_not_zero(w.cpu)
    w.mm.vma_cache.check(w.cpu, vma, "refcount_inc_not_zero(&vma->vm_refcnt)")
    return ok


def vma_put(w: World, vma: int) -> None:
    m = w.mm
    if not m.vma_cache.check(w.cpu, vma, "vma_put"):
        return
    if m.vma_refcount(vma).dec_and_test(w.cpu):
        wake_up_var(w.cpu, m.vma_refcount_addr(vma))


def lookup_rcu_refcount(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    """The policy's lookup (GUP's, and the fault's after ->map_pages said VM_FAULT_RETRY)."""
    vmf = rcu_refcount_lookup(w, mm, vpn, write)
    return None if isinstance(vmf, int) else vmf


def rcu_refcount_lookup(w: World, mm: int, vpn: int, write: bool, map_pages: bool = False) -> Vmf | int | None:
    """Lookup under RCU, then a reference taken before rcu_read_unlock (Wilcox, 2019-12-03).

    A BABY VMA (MAP_FIXED not finished) makes the fault wait until its
    flush is done; a ZOMBIE one (being unmapped) is retried, as Glisse
    proposed (2019-12-05).  With `map_pages`, a giant VMA is first faulted
    through ->map_pages under RCU without a reference; when that must sleep
    it returns VM_FAULT_RETRY and the fault takes the reference (an int
    result is the fault's, done)."""
    m, cpu, rcu = w.mm, w.cpu, w.rcu
    for _ in range(FAULT_TRIES):
        rcu.read_lock(cpu)
        vma = m.find_vma(cpu, mm, vpn)
        if not vma:
            rcu.read_unlock(cpu)
            return None
        flags = m.vma_field(cpu, vma, "vm_flags", "lookup")
        if map_pages and not flags & (VM_BABY | VM_ZOMBIE) and _giant(w, vma):
            ret = m.map_pages_nowait(cpu, Vmf(mm, vma, vpn, write, "rcu"))
            if ret != VM_FAULT_RETRY:
                rcu.read_unlock(cpu)
                w.count("map_pages")
                return ret
            w.count("retries")
        cpu.window("lookup:before-refcount")
        got = not flags & VM_ZOMBIE and vma_get(w, vma)
        rcu.read_unlock(cpu)
        if not got:
            w.count("retries")
            continue
        if flags & VM_BABY:
            w.count("baby_waits")
            off = m.vma_off(vma, "vm_flags")

            def born(off: int = off) -> bool:
                return not w.mem.load32(off) & VM_BABY

            wait_var_event(cpu, m.vma_cache.address(vma, "vm_flags"), born)
            vma_put(w, vma)
            w.count("retries")
            continue
        return Vmf(mm, vma, vpn, write, "refcount")
    return None


def _giant(w: World, vma: int) -> bool:
    m = w.mm
    return (m.vma_field(w.cpu, vma, "vm_end") - m.vma_field(w.cpu, vma, "vm_start") >= GIANT
            and w.mem.load32(m.vma_off(vma, "anon_vma")) != 0)


def release_rcu_refcount(w: World, vmf: Vmf) -> None:
    vma_put(w, vmf.vma)


def fault_rcu_refcount(w: World, mm: int, vpn: int, write: bool) -> int:
    vmf = rcu_refcount_lookup(w, mm, vpn, write, map_pages=True)
    return vmf if isinstance(vmf, int) else handle_with(w, vmf)


def _rcu_unmap_deferred(w: World, mm: int, start: int, end: int, removed, reserve: bool,
                        single_threaded: Callable[[World, int], bool]) -> None:
    """Steps 3-6 of Wilcox's mmap(): wait for the old VMAs' refcounts, synchronize_rcu,
    zap, free the old VMAs, flush (and free the pages); the range stays RESERVED until
    then (the ZERO entry).  A use-after-free of the VMA shows as such; a fault that
    installs a PTE between the zap and the free shows as an invariant.

    Empty page tables are left for exit_mmap: freeing them under lockless
    faults is what the pte_ref seed is about."""
    m, cpu = w.mm, w.cpu
    for v in removed:
        w.policy.put_base(w, v)
    cpu.window("munmap:after-refcount-wait")
    if not single_threaded(w, mm):
        if w.mem.load32(m.mm_off(mm, "nr_threads")) <= 1:
            w.count("remote_gp")
        w.rcu.synchronize(cpu)
        w.count("munmap_gps")
    gather: list[int] = []
    m.zap_page_range(cpu, mm, start, end, gather, vmas=removed)
    for v in removed:
        m.vm_area_free(cpu, v)
    cpu.window("munmap:zapped-before-flush")
    m.tlb_finish_mmu(cpu, mm, start, end, gather)
    if reserve:
        lock = m.mmap_lock(mm)
        lock.down_write(cpu)
        m.index_publish(cpu, mm, [x for x in m.index_entries(mm) if not (x[2] == RESERVED and x[0] == start)])
        lock.up_write(cpu)


def vma_put_base(w: World, vma: int) -> None:
    """Drop the index's reference and sleep until the faults' references are gone (step 3)."""
    m = w.mm
    ref = m.vma_refcount(vma)
    if not ref.dec_and_test(w.cpu):
        w.count("refcount_waits")
        wait_var_event(w.cpu, m.vma_refcount_addr(vma), lambda: ref.read() == 0)


def vma_put_base_no_wait(w: World, vma: int) -> None:
    """DELIBERATELY BROKEN: munmap drops the index's reference and does not wait for the others.

    Skips step 3 of Wilcox's mmap() ("sleep until old VMAs have a zero
    refcount"): synchronize_rcu() only waits for readers still inside RCU,
    not for a fault that took its reference and is sleeping.  The fault
    then touches the freed VMA (slab.uaf), or, when it installs between
    the zap and the free, leaves a PTE that outlives its VMA (Babka,
    2019-12-10; mm.pte-after-zap)."""
    w.mm.vma_refcount(vma).dec_and_test(w.cpu)


def single_threaded_mm_users(w: World, mm: int) -> bool:
    """Wilcox (2019-12-13): skip synchronize_rcu() if the mm has zero or one mm_users;
    remote accessors (/proc, ptrace) hold mmget, so they count."""
    return w.mem.load32(w.mm.mm_off(mm, "mm_users")) <= 1


def single_threaded_nr_threads(w: World, mm: int) -> bool:
    """DELIBERATELY BROKEN: decides "single-threaded" from the thread count.

    Kirill (2019-12-13): "I'm not sure how it will work with remote mm
    accesses. Like with /proc/ interfaces or ptrace."  A remote accessor is
    not a thread; it took mmget and is looking the VMA up under RCU while
    the grace period is skipped.  Must produce a use-after-free."""
    return w.mem.load32(w.mm.mm_off(mm, "nr_threads")) <= 1


def _rcu_write_side(w: World, mm: int, start: int, end: int, fixed_new: bool, reserve: bool,
                    baby: bool) -> None:
    """Steps 1-2 under mmap_lock for write (the new VMA, BABY while the old range is torn
    down, or the RESERVED range; the old VMAs ZOMBIE), then the deferred steps without it."""
    m, cpu = w.mm, w.cpu
    lock = m.mmap_lock(mm)
    lock.down_write(cpu)
    new = 0
    if fixed_new:
        new = m.vm_area_alloc(cpu, mm, start, end, VM_READ | VM_WRITE)
    entries = m.index_entries(mm)
    r = None if new is None else split_range(w, mm, entries, start, end, new_vma_plain)
    if r is None:
        lock.up_write(cpu)
        if new:
            m.vm_area_free(cpu, new)
        w.count("enomem")
        return
    kept, removed = r
    if new:
        if baby and removed:
            m.vma_set_flags(new, VM_BABY)
        kept.append((start, end, new))
    elif reserve and removed:
        kept.append((start, end, RESERVED))
    if not removed and not new:
        lock.up_write(cpu)
        return
    for v in removed:
        m.vma_set_flags(v, VM_ZOMBIE | VM_DETACHED)
    if not m.index_publish(cpu, mm, kept):
        lock.up_write(cpu)
        for v in removed:
            m.vma_clear_flags(v, VM_ZOMBIE | VM_DETACHED)
        old = {v for _, _, v in entries}
        for _, _, v in kept:
            if v > 0 and v not in old:
                m.vm_area_free(cpu, v)
        w.count("enomem")
        return
    lock.up_write(cpu)
    w.count("mmaps" if fixed_new else "munmaps")
    if removed:
        _rcu_unmap_deferred(w, mm, start, end, removed, reserve and not fixed_new, w.policy.single_threaded)
    if new and baby and removed:
        m.vma_clear_flags(new, VM_BABY)
        wake_up_var(cpu, m.vma_cache.address(new, "vm_flags"))


def mmap_rcu_refcount(w: World, mm: int, start: int, npages: int, fixed: bool) -> None:
    if not fixed:
        mmap_locked(w, mm, start, npages, False)
        return
    _rcu_write_side(w, mm, start, min(start + npages, w.mm.geometry.pages), True, True, w.policy.baby)


def munmap_rcu_refcount(w: World, mm: int, start: int, end: int) -> None:
    _rcu_write_side(w, mm, start, end, False, w.policy.reserve, w.policy.baby)


def anon_vma_prepare_parent(w: World, mm: int, vma: int) -> None:
    """fork: give the parent's VMA its anon_vma before copying, so that anon_vma_fork and
    vma_needs_copy read the same value although faults do not take mmap_lock (the thread
    does not discuss fork; this is the model's choice for the RCU and SRCU proposals)."""
    w.mm.anon_vma_prepare(w.cpu, Vmf(mm, vma, 0, True))


@dataclass(frozen=True, kw_only=True)
class RcuRefcountPolicy(VmaPolicy):
    put_base: Callable[[World, int], None]
    single_threaded: Callable[[World, int], bool]
    baby: bool = True
    reserve: bool = True


rcu_vma_refcount = RcuRefcountPolicy(
    "rcu_vma_refcount",
    doc="Wilcox: RCU lookup + per-VMA refcount; BABY/ZOMBIE, ZERO-entry reservation, map_pages for giant VMAs",
    lookup=lookup_rcu_refcount,
    release=release_rcu_refcount,
    fault=fault_rcu_refcount,
    mmap=mmap_rcu_refcount,
    munmap=munmap_rcu_refcount,
    new_vma=new_vma_plain,
    write_unlock=mmap_write_unlock_plain,
    dup_lock_vma=anon_vma_prepare_parent,
    vma_free=vma_free_rcu,
    put_base=vma_put_base,
    single_threaded=single_threaded_mm_users,
)


# -- srcu: Zijlstra -------------------------------------------------------------------

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
    dup_lock_vma=anon_vma_prepare_parent,
    vma_free=vma_free_now,
)


# -- speculative: Dufour ----------------------------------------------------------------

def _spf_validate(w: World, seq: int):
    def validate(vmf: Vmf) -> bool:
        if w.mem.load32(w.mm.vma_off(vmf.vma, "vm_seq")) == seq:
            return True
        w.count("spf_bail")
        return False
    return validate


def _spf_fault(w: World, mm: int, vpn: int, write: bool, validate: bool) -> int:
    """The speculative path: lockless lookup, a reference, the VMA's sequence sampled;
    validated under the ptl before set_pte_at (Zijlstra, 2020-02-07: "verify the vma (again)
    and install the PTE. If anything goes wrong, we bail").  Falls back to mmap_lock."""
    m, cpu, rcu = w.mm, w.cpu, w.rcu
    rcu.read_lock(cpu)
    vma = m.find_vma(cpu, mm, vpn)
    got = bool(vma) and vma_get(w, vma)
    seq = w.mem.load32(m.vma_off(vma, "vm_seq")) if got else 1
    rcu.read_unlock(cpu)
    if got and not seq & 1 and (not write or w.mem.load32(m.vma_off(vma, "anon_vma"))):
        vmf = Vmf(mm, vma, vpn, write, "speculative", validate=_spf_validate(w, seq) if validate else None)
        cpu.window("spf:after-lookup")
        ret = m.handle_mm_fault(cpu, vmf)
        vma_put_spf(w, vma)
        if ret != VM_FAULT_RETRY:
            w.count("spf")
            return ret
    elif got:
        vma_put_spf(w, vma)
    w.count("fallbacks")
    return fault_mmap_lock(w, mm, vpn, write)


def vma_put_spf(w: World, vma: int) -> None:
    m = w.mm
    if m.vma_cache.check(w.cpu, vma, "vma_put") and m.vma_refcount(vma).dec_and_test(w.cpu):
        w.rcu.call(w.cpu, vm_area_free_rcu, vma)


def spf_before_unmap(w: World, mm: int, vma: int) -> None:
    """vm_write_begin(): a speculative fault that sampled the sequence before now will bail."""
    w.mem.fetch_add32(w.mm.vma_off(vma, "vm_seq"), 1)


def spf_vma_free(cpu, vma: int) -> None:
    vma_put_spf(cpu.ctx, vma)


speculative = VmaPolicy(
    "speculative",
    doc="Dufour's SPF: lockless lookup, VMA seqcount validated under the ptl, mmap_lock fallback",
    lookup=lookup_mmap_lock,
    release=release_mmap_lock,
    fault=lambda w, mm, vpn, write: _spf_fault(w, mm, vpn, write, True),
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_plain,
    before_unmap=spf_before_unmap,
    free_tables=False,
    write_unlock=mmap_write_unlock_plain,
    vma_free=spf_vma_free,
)


# -- per_vma_lock: what landed in 6.4 ---------------------------------------------------

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


def lock_vma_under_rcu(w: World, mm: int, vpn: int, check: bool = True) -> int:
    """lock_vma_under_rcu(): the VMA read-locked, or 0 to fall back to mmap_lock.

    The VMA cache is SLAB_TYPESAFE_BY_RCU, so the object found may have been
    freed and reused by the time it is locked: check it is attached, of this
    mm and covers the address (mm/memory.c, 6.15)."""
    m, cpu, rcu = w.mm, w.cpu, w.rcu
    rcu.read_lock(cpu)
    vma = m.find_vma(cpu, mm, vpn)
    if not vma:
        rcu.read_unlock(cpu)
        return 0
    cpu.window("lock_vma_under_rcu:found")
    if not vma_start_read(w, mm, vma):
        rcu.read_unlock(cpu)
        w.count("vma_lock_busy")
        if w.mem.load32(m.mm_off(mm, "forking")):
            w.count("fork_locked_vma")
        return 0
    vma = m.vma_cache.ref(vma & SLOT_MASK)
    if check:
        mem = w.mem
        bad = (mem.load32(m.vma_off(vma, "vm_flags")) & VM_DETACHED
               or mem.load32(m.vma_off(vma, "vm_mm")) != m.mm_id(mm)
               or not mem.load32(m.vma_off(vma, "vm_start")) <= vpn < mem.load32(m.vma_off(vma, "vm_end")))
        if bad:
            m.vma_lock(vma).up_read(cpu)
            rcu.read_unlock(cpu)
            w.count("vma_lock_miss")
            return 0
    rcu.read_unlock(cpu)
    return vma


def _per_vma_fault(w: World, mm: int, vpn: int, write: bool, check: bool) -> int:
    vma = lock_vma_under_rcu(w, mm, vpn, check)
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


per_vma_lock = VmaPolicy(
    "per_vma_lock",
    doc="6.4+: lock_vma_under_rcu with vm_lock_seq vs mm_lock_seq, typesafe VMA slots, mmap_lock fallback",
    lookup=lookup_mmap_lock,
    release=release_mmap_lock,
    fault=lambda w, mm, vpn, write: _per_vma_fault(w, mm, vpn, write, True),
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_locked,
    before_unmap=vma_start_write,
    write_unlock=mmap_write_unlock,
    dup_lock_vma=vma_start_write,
    vma_free=vma_free_now,
    typesafe_vmas=True,
)


# -- the scenario ---------------------------------------------------------------------

class VmaLookup(Scenario):
    name = "vma_lookup"
    doc = "splitting the mmap_sem: faults find and pin VMAs while mmap/munmap/fork change them"
    counters = ("accesses", "faults", "sigsegv", "retries", "fallbacks", "spf", "spf_bail", "vma_locked",
                "vma_lock_busy", "fork_locked_vma", "vma_lock_miss", "map_pages", "mmaps", "munmaps", "madvises",
                "forks", "exits", "gups", "gup_fast", "remote", "nomm", "enomem", "oom", "munmap_gps", "remote_gp",
                "baby_waits", "refcount_waits", "srcu_waits", *MmModel.COUNTERS)

    def __init__(self, geometry: Geometry | None = None, policies: tuple[VmaPolicy, ...] = (),
                 name: str = "vma_lookup"):
        """`geometry` sizes the page tables (a user registers another instance under another
        name for a larger address space); the setup, the litmus programs and the benchmark
        place their VMAs in the first 128 pages."""
        self.geometry = geometry or Geometry()
        if self.geometry.pages < 128:
            raise ValueError(f"{name}: the geometry must map at least 128 pages, not {self.geometry.pages}")
        self.name = name
        self.policies = policies
        self.needs = Needs(pool_pages=4 * self.geometry.pages + 512, page_size=self.geometry.page_size_needed(),
                           srcu_domains=1)

    def regions(self, ncpus: int) -> list[Region]:
        return MmModel.regions(ncpus, MAX_MMS)

    def attach(self, w: World) -> None:
        w.mm = w.policy.model(w, self.geometry, w.policy.typesafe_vmas)
        w.mm.attach()

    def setup(self, w: World) -> None:
        w.mm.setup(w.cpu, w.ncpus)
        p: VmaPolicy = w.policy
        p.mmap(w, 0, 0, 16, False)
        p.mmap(w, 0, 32, GIANT + 8, False)

    # -- operations ---------------------------------------------------------------
    def operations(self, policy: VmaPolicy) -> tuple[Operation, ...]:
        pages = self.geometry.pages
        mm_a, vpn_a = Arg("task", len(TASK_MM)), Arg("vpn", pages, address=True)
        return (
            Operation("access", 40, access, (mm_a, vpn_a, Arg("write", 2))),
            Operation("mmap", 3, op_mmap, (mm_a, vpn_a, Arg("len", MAX_LEN), Arg("fixed", 2))),
            Operation("munmap", 3, op_munmap, (mm_a, vpn_a, Arg("len", MAX_LEN))),
            Operation("madvise", 2, op_madvise, (mm_a, vpn_a, Arg("len", MAX_LEN))),
            Operation("gup", 4, op_gup, (mm_a, vpn_a, Arg("fast", 2))),
            Operation("fork", 1, op_fork, (mm_a,)),
            Operation("exit", 1, op_exit, (mm_a,)),
            Operation("remote", 2, op_remote, (mm_a, vpn_a)),
        )

    def sweep(self, w: World) -> None:
        w.rcu.barrier(w.cpu)
        sweep(w.mm, w.cpu)

    def teardown(self, w: World) -> None:
        m = w.mm
        for mm in m.live_mms():
            m.smem.store32(m.mm_off(mm, "mm_users"), 1)
            m.mmput(w.cpu, mm, w.policy.vma_free)
        w.rcu.barrier(w.cpu)
        m.free_zero_page(w.cpu)
        for cache in (m.vma_cache, m.index_cache):
            left = cache.allocated()
            if len(left):
                w.cpu.report(SLAB_LEAK, f"{len(left)} {cache.name} object(s) never freed after exit",
                             slots=[int(s) for s in left[:16]])

    def litmus(self, policy: Policy) -> list | None:
        return LITMUS.get(policy.name)

    def stat_text(self, counters: dict[str, int]) -> str:
        keys = ("faults", "retries", "fallbacks", "mmaps", "munmaps", "forks", "munmap_gps")
        return " ".join(f"{k}: {counters.get(k, 0)}" for k in keys)



def _repeat(ops: list, n: int) -> list:
    return [list(op) for _ in range(n) for op in ops]


# Per mutant, a program in which its race is reachable (tasks 0 and 1 are threads of mm 0;
# task 2 is the first forked child).  The setup maps [0, 16) and [32, 72).
_UNMAP_REMAP = _repeat([["munmap", 1, 0, 11], ["mmap", 1, 0, 11, 1]], 6)
LITMUS = {
    "munmap_no_refcount_wait": [_repeat([["access", 0, 4, 1]], 8), _UNMAP_REMAP],
    "fault_without_srcu": [_repeat([["access", 0, 4, 1]], 8), _UNMAP_REMAP],
    "no_revalidate": [_repeat([["access", 0, 4, 0], ["access", 0, 5, 0]], 4), _UNMAP_REMAP],
    "free_pgtables_no_ipi": [_repeat([["access", 0, 4, 1], ["gup", 0, 4, 1]], 6), _UNMAP_REMAP],
    "skip_gp_single_thread": [
        [["fork", 0]] + _repeat([["munmap", 2, 0, 11], ["mmap", 2, 0, 11, 1]], 6),
        [["access", 1, 40 + i, 0] for i in range(12)] + _repeat([["remote", 2, 4]], 16)],
    "reuse_before_flush": [
        _repeat([["access", 0, 4, 1], ["mmap", 0, 0, 11, 1], ["gup", 0, 4, 0], ["access", 0, 4, 0]], 3),
        _UNMAP_REMAP],
    "fork_without_vma_start_write": [_repeat([["fork", 0], ["exit", 2]], 6),
                                     _repeat([["mmap", 1, 0, 15, 1], ["access", 1, 5, 1]], 6)],
    "typesafe_no_recheck": [
        _repeat([["access", 0, 4, 1]], 8),
        _repeat([["munmap", 1, 0, 15], ["mmap", 1, 100, 3, 0], ["munmap", 1, 100, 3], ["mmap", 1, 0, 15, 1]], 3)],
    # Two of the model's mutants show another way too in generated programs (a PTE to a freed page is
    # also a mapped page below its mappings at the sweep; a PTE left behind is also a table freed under
    # it): their programs pin the way their check sees.  The model's other mutants are hunted blind.
    "gup_unpins_twice": [[["access", 0, 5, 1], ["gup", 0, 5, 0], ["access", 0, 5, 0]], [["access", 1, 9, 1]]],
    "zap_skips_last_pte": [[["access", 0, 3, 1], ["munmap", 0, 0, 3]], [["access", 1, 9, 1]]],
}


# -- operations (the harness draws the arguments) ------------------------------------------

def enter(w: World, mm: int) -> bool:
    """Run as a thread of mm: mm 0's threads are the CPUs; a child is single-threaded."""
    if mm == 0:
        return True
    lock = w.mm.task_lock(mm)
    lock.lock(w.cpu)
    if w.mm.mm_state(mm) != MM_LIVE:
        lock.unlock(w.cpu)
        w.count("nomm")
        return False
    return True


def leave(w: World, mm: int) -> None:
    if mm:
        w.mm.task_lock(mm).unlock(w.cpu)


def user_access(w: World, mm: int, vpn: int, write: bool) -> None:
    m, cpu, policy = w.mm, w.cpu, w.policy
    for _ in range(FAULT_TRIES):
        if m.access(cpu, mm, vpn, write):
            w.count("accesses")
            return
        ret = policy.fault(w, mm, vpn, write)
        if ret == VM_FAULT_SIGSEGV:
            w.count("sigsegv")
            return
        if ret == VM_FAULT_OOM:
            w.count("oom")
            return
        if ret == VM_FAULT_OK:
            w.count("faults")
        else:
            w.count("retries")


def access(w: World, task: int, vpn: int, write: int) -> None:
    mm = TASK_MM[task]
    if enter(w, mm):
        try:
            user_access(w, mm, vpn, bool(write))
        finally:
            leave(w, mm)


def op_mmap(w: World, task: int, vpn: int, length: int, fixed: int) -> None:
    mm = TASK_MM[task]
    if enter(w, mm):
        try:
            w.policy.mmap(w, mm, vpn, 1 + length, bool(fixed))
        finally:
            leave(w, mm)


def op_munmap(w: World, task: int, vpn: int, length: int) -> None:
    mm = TASK_MM[task]
    if enter(w, mm):
        try:
            w.policy.munmap(w, mm, *_range(w, vpn, length))
        finally:
            leave(w, mm)


def op_madvise(w: World, task: int, vpn: int, length: int) -> None:
    """madvise(MADV_DONTNEED) under mmap_lock read: zap, flushing before each ptl is dropped."""
    mm = TASK_MM[task]
    if not enter(w, mm):
        return
    m, cpu = w.mm, w.cpu
    start, end = _range(w, vpn, length)
    lock = m.mmap_lock(mm)
    lock.down_read(cpu)
    try:
        gather: list[int] = []
        for s, e, v in m.index_entries(mm):
            if v != RESERVED and s < end and e > start:
                m.zap_page_range(cpu, mm, max(s, start), min(e, end), gather, flush_each=True)
        m.tlb_finish_mmu(cpu, mm, start, end, gather, flushed=True)
        w.count("madvises")
    finally:
        lock.up_read(cpu)
        leave(w, mm)


def gup_slow(w: World, mm: int, vpn: int, write: bool) -> None:
    """get_user_pages(): pin the VMA as faults do, follow the PTE, fault it in if needed."""
    m, policy = w.mm, w.policy
    vmf = policy.lookup(w, mm, vpn, write)
    if vmf is None:
        return
    try:
        ref = m.follow_page(w.cpu, vmf)
        if not ref and m.handle_mm_fault(w.cpu, vmf) == VM_FAULT_OK:
            ref = m.follow_page(w.cpu, vmf)
    finally:
        policy.release(w, vmf)
    if ref:
        w.count("gups")
        m.use_pinned_page(w.cpu, ref, "get_user_pages: using the pinned page")


def op_gup(w: World, task: int, vpn: int, fast: int) -> None:
    mm = TASK_MM[task]
    if not enter(w, mm):
        return
    try:
        if fast:
            ref = w.mm.gup_fast(w.cpu, mm, vpn, False)
            if ref:
                w.count("gup_fast")
                w.mm.use_pinned_page(w.cpu, ref, "get_user_pages_fast: using the pinned page")
                return
        gup_slow(w, mm, vpn, False)
    finally:
        leave(w, mm)


def op_remote(w: World, task: int, vpn: int) -> None:
    """access_remote_vm() as /proc/pid/mem does it: mmget_not_zero, GUP, mmput."""
    mm = TASK_MM[task]
    m = w.mm
    if m.mm_state(mm) != MM_LIVE or not m.mmget_not_zero(w.cpu, mm):
        w.count("nomm")
        return
    try:
        gup_slow(w, mm, vpn, False)
        w.count("remote")
    finally:
        m.mmput(w.cpu, mm, w.policy.vma_free)


def op_fork(w: World, task: int) -> None:
    mm = TASK_MM[task]
    if not enter(w, mm):
        return
    try:
        dup_mmap(w, mm)
    finally:
        leave(w, mm)


def dup_mmap(w: World, oldmm: int) -> int:
    """dup_mmap(): copy every VMA and share its pages write-protected, under mmap_lock for write.

    anon_vma_fork reads the parent's anon_vma, and copy_page_range reads it
    again (vma_needs_copy); a fault that sets it in between is what
    vma_start_write on the parent's VMAs prevents (fb49c455323f, "fork:
    lock VMAs of the parent process when forking")."""
    m, cpu, policy = w.mm, w.cpu, w.policy
    new = m.mm_alloc(cpu)
    if new < 0:
        w.count("nomm")
        return -1
    mmap_write_lock(w, oldmm)
    w.mem.store32(m.mm_off(oldmm, "forking"), 1)
    entries: list[tuple[int, int, int]] = []
    ok = True
    try:
        for s, e, v in m.index_entries(oldmm):
            if v == RESERVED:
                continue
            if policy.dup_lock_vma is not None:
                policy.dup_lock_vma(w, oldmm, v)
            nv = m.vm_area_alloc(cpu, new, s, e, m.vma_field(cpu, v, "vm_flags", "dup_mmap") & (VM_READ | VM_WRITE))
            if nv is None:
                ok = False
                break
            w.mem.store32(m.vma_off(nv, "anon_vma"), m.vma_field(cpu, v, "anon_vma", "anon_vma_fork"))
            entries.append((s, e, nv))
            cpu.window("dup_mmap:after-anon_vma_fork")
            if m.vma_field(cpu, v, "anon_vma", "vma_needs_copy") and not m.copy_page_range(cpu, new, oldmm, nv, s, e):
                ok = False
                break
        m.index_publish(cpu, new, entries)
        m.flush_tlb_mm(cpu, oldmm)
    finally:
        w.mem.store32(m.mm_off(oldmm, "forking"), 0)
        policy.write_unlock(w, oldmm)
    if not ok:
        m.mmput(cpu, new, policy.vma_free)
        w.count("enomem")
        return -1
    m.mm_set_live(new)
    w.count("forks")
    return new


def op_exit(w: World, task: int) -> None:
    """A child exits: its task is gone; its mm goes with the last mmput (a remote user may hold it)."""
    mm = TASK_MM[task]
    if mm == 0:
        return
    m = w.mm
    lock = m.task_lock(mm)
    lock.lock(w.cpu)
    if m.mm_state(mm) != MM_LIVE:
        lock.unlock(w.cpu)
        w.count("nomm")
        return
    w.mem.store32(m.mm_off(mm, "state"), MM_EXITED)
    w.mem.fetch_sub32(m.mm_off(mm, "nr_threads"), 1)
    lock.unlock(w.cpu)
    m.mmput(w.cpu, mm, w.policy.vma_free)
    w.count("exits")


register(VmaLookup(policies=(
    mmap_lock,
    mutant(mmap_lock, "free_pgtables_no_ipi", WALK_FREED_TABLE,
           "mm/mmu_gather.c: tlb_remove_table_sync_one (a table is freed only after the IPI that fast GUP, "
           "walking with interrupts off, holds back)",
           "page tables freed before the flush IPI, while fast GUP walks them with irqs off", "ipi_waits",
           remove_tables=pte_free_without_ipi),
    # The model's own functions, broken one at a time (policies/mm/broken.py), under the baseline.
    mutant(mmap_lock, "zap_zero_page", RMAP_UNDERFLOW, "mm/memory.c vm_normal_page(): special mappings have no "
           "struct page to unmap", "zap treats the zero page as a normal page", "zero_pages_zapped",
           model=broken.IgnoresSpecialPtes),
    mutant(mmap_lock, "rss_batch_lost", BAD_RSS, "kernel/fork.c check_mm(): 'BUG: Bad rss-counter state'",
           "zap_pte_range's RSS batch is never added", "ptes_zapped", model=broken.LosesRssBatch),
    mutant(mmap_lock, "pgtable_bytes_kept", BAD_PGTABLE_BYTES,
           "kernel/fork.c check_mm(): 'non-zero pgtables_bytes on freeing mm'",
           "a freed page table is not subtracted from pgtable_bytes", "tables_freed", model=broken.KeepsPgtableBytes),
    mutant(mmap_lock, "gup_pin_leak", BAD_PAGE_REFS, "mm/gup.c: every pin_user_pages() needs its unpin_user_page()",
           "GUP never drops the reference it took", "gup_unpins", model=broken.LeaksGupPin),
    mutant(mmap_lock, "gup_unpins_twice", ACCESS_FREED_PAGE,
           "mm/gup.c: unpin_user_page() drops exactly the reference GUP took",
           "GUP drops its reference twice: the page is freed while mapped", "gup_unpins",
           model=broken.UnpinsTwice),
    mutant(mmap_lock, "cow_reuse_shared", COW_WRITE_SHARED,
           "mm/memory.c do_wp_page() / wp_can_reuse_anon_folio(): reuse only an exclusive page",
           "a write fault reuses a page fork shares", "cow_copies", model=broken.ReusesSharedPage),
    mutant(mmap_lock, "zap_skips_last_pte", PTE_IN_NO_VMA,
           "mm/memory.c zap_pte_range(): 'do { ... } while (pte++, addr += PAGE_SIZE, addr != end)'",
           "zap stops one entry early", "ptes_zapped", model=broken.SkipsLastPte),
    mutant(mmap_lock, "zap_leaks_pages", POOL_LEAK, "mm/mmu_gather.c tlb_batch_pages_flush(): the gathered "
           "pages are released after the flush", "zap's gathered pages are never released", "ptes_zapped",
           model=broken.DropsGatherBatch),
    mutant(mmap_lock, "vma_never_freed", SLAB_LEAK, "mm/vma.c remove_vma(): vm_area_free() of every VMA munmap "
           "took out", "a VMA munmap took out of the tree is never freed", "munmaps", vma_free=vma_free_forgotten),
    mutant(mmap_lock, "free_pgtables_past_neighbours", FREE_MAPPED_TABLE,
           "mm/memory.c free_pgd_range(): floor and ceiling keep the tables neighbouring VMAs use",
           "free_pgtables ignores floor and ceiling", "shared_tables_kept", model=broken.FreesTablesPastNeighbours),
    rcu_vma_refcount,
    mutant(rcu_vma_refcount, "munmap_no_refcount_wait", (SLAB_UAF, PTE_AFTER_ZAP),
           "Wilcox 2019-12-03: '3 sleep until old VMAs have a zero refcount'",
           "munmap does not wait for the VMA refcount before freeing it", "refcount_waits",
           put_base=vma_put_base_no_wait),
    mutant(rcu_vma_refcount, "reuse_before_flush", STALE_TLB,
           "Glisse 2019-12-09: 'any new mmap might install itself in the unmaped area but can not service "
           "fault until the munmap is fully done (ie all cache and TLB are flush)'",
           "no BABY flag for MAP_FIXED and no ZERO entry for munmap: the range is reused before the flush",
           "baby_waits", baby=False, reserve=False),
    mutant(rcu_vma_refcount, "skip_gp_single_thread", SLAB_UAF,
           "Kirill 2019-12-13 / Wilcox 2019-12-13: 'Those users call mmget() which increases mm_users'",
           "synchronize_rcu skipped for a single-threaded process although a remote accessor holds mmget",
           "remote_gp", single_threaded=single_threaded_nr_threads),
    srcu,
    mutant(srcu, "fault_without_srcu", (SLAB_UAF, PTE_AFTER_ZAP),
           "Wilcox 2020-02-06: 'at the beginning of a page fault call srcu_read_lock(&vma_srcu)'",
           "the fault path skips srcu_read_lock", "srcu_waits", lookup=lookup_srcu_unlocked,
           release=release_nothing),
    speculative,
    mutant(speculative, "no_revalidate", PTE_AFTER_ZAP,
           "Babka 2019-12-10: 'a parallel fault that started with the old VMA ... doesn't end up being the "
           "last to install the PTE for the VMA that's going away'",
           "the speculative fault installs the PTE without validating the VMA under the ptl", "spf_bail",
           fault=lambda w, mm, vpn, write: _spf_fault(w, mm, vpn, write, False)),
    per_vma_lock,
    mutant(per_vma_lock, "fork_without_vma_start_write", FORK_NO_ANON_VMA,
           "fb49c455323f 'fork: lock VMAs of the parent process when forking' (the per-VMA lock's fork race)",
           "dup_mmap does not vma_start_write the parent's VMAs while faults run under the VMA lock",
           "fork_locked_vma", dup_lock_vma=None),
    mutant(per_vma_lock, "typesafe_no_recheck", PTE_OUTSIDE_VMA,
           "mm/memory.c lock_vma_under_rcu (SLAB_TYPESAFE_BY_RCU): check vm_mm and the range after locking",
           "a reused VMA slot is used without checking vm_mm and the range after taking the lock",
           "vma_lock_miss", fault=lambda w, mm, vpn, write: _per_vma_fault(w, mm, vpn, write, False)),
)))
