"""rcu_vma_refcount: Wilcox (linux-mm, 2019-12-03), a VMA found under RCU and pinned by a refcount.

BABY/ZOMBIE (Glisse, 2019-12-05), the ZERO entry (Wilcox, 2019-12-09),
->map_pages under RCU for a giant VMA, and synchronize_rcu skipped when
mm_users <= 1 (Wilcox, 2019-12-13).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policies.mm import (
    RESERVED,
    VM_BABY,
    VM_DETACHED,
    VM_FAULT_RETRY,
    VM_FAULT_SIGSEGV,
    VM_READ,
    VM_WRITE,
    VM_ZOMBIE,
    Vmf,
)
from policies.mm.checks import (
    PTE_AFTER_ZAP,
    STALE_TLB,
)
from policies.scenario import World, mutant
from policies.vma_lookup.common import (
    FAULT_TRIES,
    GIANT,
    VmaPolicy,
    entries_around,
    new_vma_plain,
    split_range,
)
from policies.vma_lookup.mmap_lock import (
    fault_or_fall_back,
    mmap_locked,
    mmap_write_downgrade_plain,
    mmap_write_unlock_plain,
    vma_free_rcu,
)
from shm import wait_var_event, wake_up_var
from shm.checks import SLAB_UAF


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
        vma = m.vma_lookup(cpu, mm, vpn)
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
            wait_born(w, vma)
            vma_put(w, vma)
            w.count("retries")
            continue
        return Vmf(mm, vma, vpn, write, "refcount")
    return None


def wait_born(w: World, vma: int) -> None:
    """Sleep until the MAP_FIXED that made the VMA has torn the old range down (BABY cleared)."""
    w.count("baby_waits")
    off = w.mm.vma_off(vma, "vm_flags")

    def born() -> bool:
        return not w.mem.load32(off) & VM_BABY

    wait_var_event(w.cpu, w.mm.vma_cache.address(vma, "vm_flags"), born)


def _mmap_lock_born(w: World, mm: int, vpn: int) -> int:
    """mmap_lock for read and the VMA covering vpn (0: none), waiting out a BABY one: here the
    lock does not hold a MAP_FIXED's teardown off (it runs without it).  -1 if it stayed BABY
    (the lock is then not held)."""
    m, cpu = w.mm, w.cpu
    lock = m.mmap_lock(mm)
    for _ in range(FAULT_TRIES):
        lock.down_read(cpu)
        vma = m.vma_lookup(cpu, mm, vpn)
        if vma and m.vma_field(cpu, vma, "vm_flags", "fallback") & VM_BABY:
            lock.up_read(cpu)
            wait_born(w, vma)
            continue
        return vma
    return -1


def fault_mmap_lock_born(w: World, mm: int, vpn: int, write: bool) -> int:
    """The fallback under mmap_lock for read, a BABY VMA waited for, as the lookup does."""
    vma = _mmap_lock_born(w, mm, vpn)
    if vma < 0:
        return VM_FAULT_RETRY
    try:
        return w.mm.handle_mm_fault(w.cpu, Vmf(mm, vma, vpn, write, "mmap_lock")) if vma else VM_FAULT_SIGSEGV
    finally:
        w.mm.mmap_lock(mm).up_read(w.cpu)


def lookup_mmap_lock_born(w: World, mm: int, vpn: int, write: bool) -> Vmf | None:
    """The VMA under mmap_lock for read (held until release_mmap_lock), a BABY one waited for:
    what a FOLL_PIN GUP looks up (lookup_locked)."""
    vma = _mmap_lock_born(w, mm, vpn)
    if vma <= 0:
        if vma == 0:
            w.mm.mmap_lock(mm).up_read(w.cpu)
        return None
    return Vmf(mm, vma, vpn, write, "mmap_lock")


def _giant(w: World, vma: int) -> bool:
    m = w.mm
    return (
        m.vma_field(w.cpu, vma, "vm_end") - m.vma_field(w.cpu, vma, "vm_start") >= GIANT
        and w.mem.load32(m.vma_off(vma, "anon_vma")) != 0
    )


def release_rcu_refcount(w: World, vmf: Vmf) -> None:
    vma_put(w, vmf.vma)


def fault_rcu_refcount(w: World, mm: int, vpn: int, write: bool) -> int:
    vmf = rcu_refcount_lookup(w, mm, vpn, write, map_pages=True)
    return vmf if isinstance(vmf, int) else fault_or_fall_back(w, mm, vpn, write, vmf)


def _rcu_unmap_deferred(
    w: World, mm: int, start: int, end: int, removed, reserve: bool, single_threaded: Callable[[World, int], bool]
) -> None:
    """Steps 3-6 of Wilcox's mmap(): wait for the old VMAs' refcounts, synchronize_rcu,
    zap, free the old VMAs, flush (and free the pages); the range stays RESERVED until
    then (the ZERO entry).  A use-after-free of the VMA shows as such; a fault that
    installs a PTE between the zap and the free shows as an invariant.

    The tables of the gap are freed too (Kirill, 2019-12-03: "munmap() would
    free them"), with the neighbours read under mmap_lock for read: no VMA
    is mapped beside the gap while they go, and a fault only walks the
    tables of a VMA it found, which the RESERVED or BABY range is not."""
    m, cpu = w.mm, w.cpu
    for v in removed:
        w.policy.put_base(w, v)
    cpu.window("munmap:after-refcount-wait")
    if not single_threaded(w, mm):
        if w.mem.load32(m.mm_off(mm, "nr_threads")) <= 1:
            w.count("remote_gp")
        w.rcu.synchronize(cpu)
        w.count("munmap_gps")
    tlb = m.tlb_gather_mmu(cpu, mm)
    m.zap_page_range(cpu, tlb, start, end, vmas=removed)
    lock = m.mmap_lock(mm)
    lock.down_read(cpu)
    floor, ceiling = entries_around([x for x in m.index_entries(mm) if not start <= x[0] < end], start, end)
    if floor < ceiling:
        m.free_pgtables(cpu, mm, start, end, max(floor, 0), min(ceiling, m.geometry.pages))
    lock.up_read(cpu)
    for v in removed:
        m.vm_area_free(cpu, v)
    cpu.window("munmap:zapped-before-flush")
    m.tlb_finish_mmu(cpu, tlb)
    if reserve:
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


def _rcu_write_side(w: World, mm: int, start: int, end: int, *, fixed_new: bool, reserve: bool, baby: bool) -> bool:
    """Steps 1-2 under mmap_lock for write (the new VMA, BABY while the old range is torn
    down, or the RESERVED range; the old VMAs ZOMBIE), then the deferred steps without it.
    False if it ran out of memory, and changed nothing."""
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
        return False
    kept, removed = r
    if new:
        if baby and removed:
            m.vma_set_flags(new, VM_BABY)
        kept.append((start, end, new))
    elif reserve and removed:
        kept.append((start, end, RESERVED))
    if not removed and not new:
        lock.up_write(cpu)
        return True
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
        return False
    lock.up_write(cpu)
    w.count("mmaps" if fixed_new else "munmaps")
    if removed:
        _rcu_unmap_deferred(w, mm, start, end, removed, reserve and not fixed_new, w.policy.single_threaded)
    if new and baby and removed:
        m.vma_clear_flags(new, VM_BABY)
        wake_up_var(cpu, m.vma_cache.address(new, "vm_flags"))
    return True


def mmap_rcu_refcount(w: World, mm: int, start: int, npages: int, fixed: bool) -> int | None:
    if not fixed:
        return mmap_locked(w, mm, start, npages, False)
    end = min(start + npages, w.mm.geometry.pages)
    if _rcu_write_side(w, mm, start, end, fixed_new=True, reserve=True, baby=w.policy.baby):
        return start
    return None


def munmap_rcu_refcount(w: World, mm: int, start: int, end: int) -> bool:
    return _rcu_write_side(w, mm, start, end, fixed_new=False, reserve=w.policy.reserve, baby=w.policy.baby)


def vma_wait_refs(w: World, mm: int, vma: int) -> None:
    """fork: wait until no fault holds the parent's VMA but the index's own reference.

    A write fault checks mm->forking after taking its reference and then falls back
    to mmap_lock, which fork holds; so once this returns, no fault runs on
    the VMA until the fork is done (what vma_start_write gives per-VMA locks,
    fb49c455323f; the thread does not discuss fork: the model's choice)."""
    m, cpu = w.mm, w.cpu
    if w.mem.load32(m.vma_off(vma, "vm_flags")) & VM_BABY:
        return  # no fault runs on it, and it is born only once fork drops mmap_lock; waiting would deadlock
    off = m.vma_off(vma, "vm_refcnt")
    attempt = 0
    while (v := w.mem.load32(off)) > 1:
        if attempt == 0:
            w.count("refcount_waits")
        cpu.sched.spin(cpu, attempt, w.mem, off, v)
        attempt += 1


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
    fallback=fault_mmap_lock_born,
    lookup_locked=lookup_mmap_lock_born,
    mmap=mmap_rcu_refcount,
    munmap=munmap_rcu_refcount,
    new_vma=new_vma_plain,
    dup_lock_vma=vma_wait_refs,
    write_unlock=mmap_write_unlock_plain,
    write_downgrade=mmap_write_downgrade_plain,
    vma_free=vma_free_rcu,
    put_base=vma_put_base,
    single_threaded=single_threaded_mm_users,
)


MUTANTS = (
    mutant(
        rcu_vma_refcount,
        "munmap_no_refcount_wait",
        (SLAB_UAF, PTE_AFTER_ZAP),
        "Wilcox 2019-12-03: '3 sleep until old VMAs have a zero refcount'",
        "munmap does not wait for the VMA refcount before freeing it",
        "refcount_waits",
        put_base=vma_put_base_no_wait,
    ),
    mutant(
        rcu_vma_refcount,
        "reuse_before_flush",
        STALE_TLB,
        "Glisse 2019-12-09: 'any new mmap might install itself in the unmaped area but can not service "
        "fault until the munmap is fully done (ie all cache and TLB are flush)'",
        "no BABY flag for MAP_FIXED and no ZERO entry for munmap: the range is reused before the flush",
        "baby_waits",
        baby=False,
        reserve=False,
    ),
    mutant(
        rcu_vma_refcount,
        "skip_gp_single_thread",
        SLAB_UAF,
        "Kirill 2019-12-13 / Wilcox 2019-12-13: 'Those users call mmget() which increases mm_users'",
        "synchronize_rcu skipped for a single-threaded process although a remote accessor holds mmget",
        "remote_gp",
        single_threaded=single_threaded_nr_threads,
    ),
)
