"""The vma_lookup scenario: its state and its operations (the harness draws their arguments);
the litmus programs are litmus.py."""

from __future__ import annotations

import functools
from collections.abc import Callable

from policies.mm import (
    FAULT_FLAG_UNSHARE,
    FOLL_GET,
    FOLL_LONGTERM,
    FOLL_PIN,
    FOLL_WRITE,
    GUP_MUST_UNSHARE,
    MM_EXITED,
    MM_LIVE,
    RESERVED,
    VM_FAULT_OK,
    VM_FAULT_OOM,
    VM_FAULT_SIGSEGV,
    VM_READ,
    VM_WRITE,
    Geometry,
)
from policies.mm.scenario import MmScenario
from policies.scenario import Arg, Operation, Policy, World
from policies.vma_lookup.common import FAULT_TRIES, GIANT, MAX_LEN, TASK_MM, VmaPolicy, clamp_range
from policies.vma_lookup.litmus import LITMUS
from policies.vma_lookup.mmap_lock import lookup_mmap_lock, mmap_write_lock, release_mmap_lock


class VmaLookup(MmScenario):
    name = "vma_lookup"
    doc = "splitting the mmap_sem: faults find and pin VMAs while mmap/munmap/fork change them"
    counters = (
        "accesses",
        "faults",
        "sigsegv",
        "retries",
        "fallbacks",
        "spf",
        "spf_bail",
        "vma_locked",
        "vma_lock_busy",
        "fork_locked_vma",
        "vma_lock_miss",
        "vma_no_anon",
        "map_pages",
        "mmaps",
        "munmaps",
        "madvises",
        "forks",
        "exits",
        "gups",
        "gup_fast",
        "gup_unshares",
        "remote",
        "nomm",
        "enomem",
        "oom",
        "munmap_gps",
        "fork_gps",
        "remote_gp",
        "baby_waits",
        "refcount_waits",
        "srcu_waits",
        "srcu_frees",
        *MmScenario.counters,
    )

    def __init__(
        self, geometry: Geometry | None = None, policies: tuple[VmaPolicy, ...] = (), name: str = "vma_lookup"
    ):
        """`geometry` sizes the page tables (a user registers another instance under another
        name for a larger address space); the setup, the litmus programs and the benchmark
        place their VMAs in the first 128 pages.  A range argument spans up to two PTE
        tables (16 pages with the default 8-entry tables)."""
        super().__init__(geometry, srcu_domains=1)
        if self.geometry.pages < 128:
            raise ValueError(f"{name}: the geometry must map at least 128 pages, not {self.geometry.pages}")
        self.name = name
        self.policies = policies
        self.max_len = max(MAX_LEN, 2 * self.geometry.pte)

    def setup(self, w: World) -> None:
        super().setup(w)
        p: VmaPolicy = w.policy
        p.mmap(w, 0, 0, 16, False)
        p.mmap(w, 0, 32, GIANT + 8, False)

    # -- operations ---------------------------------------------------------------
    def operations(self, policy: VmaPolicy) -> tuple[Operation, ...]:
        pages = self.geometry.pages
        mm_a, vpn_a = Arg("task", len(TASK_MM)), Arg("vpn", pages, address=True)
        return (
            Operation("access", 40, access, (mm_a, vpn_a, Arg("write", 2))),
            Operation("mmap", 3, op_mmap, (mm_a, vpn_a, Arg("len", self.max_len), Arg("fixed", 2))),
            Operation("munmap", 3, op_munmap, (mm_a, vpn_a, Arg("len", self.max_len))),
            Operation("madvise", 2, op_madvise, (mm_a, vpn_a, Arg("len", self.max_len))),
            Operation("pageout", 1, op_pageout, (mm_a, vpn_a, Arg("len", self.max_len))),
            Operation("migrate", 1, op_migrate, (mm_a, vpn_a, Arg("len", self.max_len))),
            Operation("gup", 4, op_gup, (mm_a, vpn_a, Arg("fast", 2))),
            Operation("pin", 2, op_pin, (mm_a, vpn_a, Arg("how", len(PIN_HOW)), Arg("fast", 2))),
            Operation("unpin", 2, op_unpin, ()),
            Operation("fork", 1, op_fork, (mm_a,)),
            Operation("exit", 1, op_exit, (mm_a,)),
            Operation("remote", 2, op_remote, (mm_a, vpn_a)),
        )

    def litmus(self, policy: Policy) -> list | None:
        return LITMUS.get(policy.name)

    def stat_text(self, counters: dict[str, int]) -> str:
        keys = ("faults", "retries", "fallbacks", "mmaps", "munmaps", "forks", "munmap_gps")
        return " ".join(f"{k}: {counters.get(k, 0)}" for k in keys)


# -- operations (the harness draws the arguments) ------------------------------------------


def enter(w: World, mm: int) -> bool:
    """Run as the thread of child mm (single-threaded: its task lock is held); False if it is
    gone.  mm 0's threads are the CPUs, which need no such thing."""
    lock = w.mm.task_lock(mm)
    lock.lock(w.cpu)
    if w.mm.mm_state(mm) != MM_LIVE:
        lock.unlock(w.cpu)
        w.count("nomm")
        return False
    return True


def leave(w: World, mm: int) -> None:
    w.mm.task_lock(mm).unlock(w.cpu)


def as_task(body: Callable[..., None]) -> Callable[..., None]:
    """An operation run by a thread of task's mm (`body(w, mm, ...)`): the child's task lock is
    held around it, and nothing runs if the child is gone."""

    @functools.wraps(body)
    def op(w: World, task: int, *args: int) -> None:
        mm = TASK_MM[task]
        if not mm:
            body(w, 0, *args)
        elif enter(w, mm):
            try:
                body(w, mm, *args)
            finally:
                leave(w, mm)

    return op


def user_access(w: World, mm: int, vpn: int, write: int) -> None:
    """A user load or store by a thread of mm, and the faults it takes until it succeeds
    (FAULT_TRIES at most)."""
    m, cpu, policy = w.mm, w.cpu, w.policy
    write = bool(write)
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


access = as_task(user_access)


@as_task
def op_mmap(w: World, mm: int, vpn: int, length: int, fixed: int) -> None:
    since = w.mm.tlb_call_begin()
    start = w.policy.mmap(w, mm, vpn, 1 + length, bool(fixed))
    if start is not None:
        w.mm.tlb_promise(w.cpu, mm, start, start + 1 + length, since=since)


@as_task
def op_munmap(w: World, mm: int, vpn: int, length: int) -> None:
    start, end = clamp_range(w, vpn, length)
    since = w.mm.tlb_call_begin()
    if w.policy.munmap(w, mm, start, end):
        w.mm.tlb_promise(w.cpu, mm, start, end, since=since)


@as_task
def op_madvise(w: World, mm: int, vpn: int, length: int) -> None:
    w.mm.madvise_dontneed(w.cpu, mm, *clamp_range(w, vpn, length))
    w.count("madvises")


@as_task
def op_pageout(w: World, mm: int, vpn: int, length: int) -> None:
    """madvise(MADV_PAGEOUT): the range's exclusive pages to swap."""
    w.mm.madvise_pageout(w.cpu, mm, *clamp_range(w, vpn, length))


@as_task
def op_migrate(w: World, mm: int, vpn: int, length: int) -> None:
    """Move the range's exclusive pages (migrate_vma, as a driver or NUMA balancing would)."""
    w.mm.migrate_vma(w.cpu, mm, *clamp_range(w, vpn, length))


def get_user_pages(w: World, mm: int, vpn: int, gup_flags: int) -> int:
    """__get_user_pages(): find the VMA, follow the PTE, fault it in (or unshare it for a R/O
    FOLL_PIN) if needed, and follow again, a few times; the page, or 0.  A FOLL_PIN holds mmap_lock for read, as
    pin_user_pages does (its fault may allocate the VMA's anon_vma); a FOLL_GET for a moment's
    read pins the VMA as the policy's faults do."""
    m, policy = w.mm, w.policy
    if gup_flags & FOLL_PIN:
        lookup, release = policy.lookup_locked or lookup_mmap_lock, release_mmap_lock
    else:
        lookup, release = policy.lookup, policy.release
    vmf = lookup(w, mm, vpn, bool(gup_flags & FOLL_WRITE))
    if vmf is None:
        return 0
    try:
        for _ in range(FAULT_TRIES):
            ref = m.follow_page_pte(w.cpu, vmf, gup_flags)
            if ref > 0:
                break
            if ref == GUP_MUST_UNSHARE:
                vmf.flags |= FAULT_FLAG_UNSHARE
                w.count("gup_unshares")
            if m.handle_mm_fault(w.cpu, vmf) != VM_FAULT_OK:
                break
    finally:
        release(w, vmf)
    if ref > 0:
        w.count("gups")
        return ref
    return 0


def gup_slow(w: World, mm: int, vpn: int) -> None:
    """get_user_pages() for a moment's use: a copy, as /proc/pid/mem or process_vm_readv makes."""
    ref = get_user_pages(w, mm, vpn, FOLL_GET)
    if ref:
        w.mm.use_pinned_page(w.cpu, mm, ref, "get_user_pages: using the pinned page")


@as_task
def op_gup(w: World, mm: int, vpn: int, fast: int) -> None:
    if fast:
        ref = w.mm.gup_fast(w.cpu, mm, vpn, FOLL_GET)
        if ref:
            w.count("gup_fast")
            w.mm.use_pinned_page(w.cpu, mm, ref, "get_user_pages_fast: using the pinned page")
            return
    gup_slow(w, mm, vpn)


PIN_HOW = (
    FOLL_PIN | FOLL_LONGTERM,  # a R/O registration (RDMA, a vfio DMA map read by the device)
    FOLL_PIN | FOLL_LONGTERM | FOLL_WRITE,  # a device writes into the page
    FOLL_GET,  # vmsplice: a pipe holds the page for as long as it likes
)


@as_task
def op_pin(w: World, mm: int, vpn: int, how: int, fast: int) -> None:
    """pin_user_pages_fast(), falling back to the slow path, for a pin the driver keeps until a
    later unpin (this CPU's previous pin is released first)."""
    w.mm.release_pin(w.cpu, w.cpu.id)
    gup_flags = PIN_HOW[how]
    unmaps = w.mm.pinned_unmaps(mm, vpn)
    ref = w.mm.gup_fast(w.cpu, mm, vpn, gup_flags) if fast else 0
    if ref:
        w.count("gup_fast")
    else:
        ref = get_user_pages(w, mm, vpn, gup_flags)
    if ref:
        w.mm.keep_pin(w.cpu, mm, vpn, ref, gup_flags, unmaps)


def op_unpin(w: World) -> None:
    """The driver releases this CPU's long-term pin (unpin_user_page)."""
    w.mm.release_pin(w.cpu, w.cpu.id)


def op_remote(w: World, task: int, vpn: int) -> None:
    """access_remote_vm() as /proc/pid/mem does it: get_task_mm, GUP, mmput; the mm it holds must
    still be the one it took (mm.uaf)."""
    mm = TASK_MM[task]
    m = w.mm
    mmid = m.get_task_mm(w.cpu, mm)
    if not mmid:
        w.count("nomm")
        return
    try:
        gup_slow(w, mm, vpn)
        w.count("remote")
    finally:
        m.mm_check(w.cpu, mmid, "access_remote_vm")
        m.mmput(w.cpu, mm)


@as_task
def op_fork(w: World, mm: int) -> None:
    dup_mmap(w, mm)


def dup_mmap(w: World, oldmm: int) -> int:
    """dup_mmap(): copy every VMA and share its pages write-protected, under mmap_lock for write.

    No fault may run on the parent's VMAs while they are copied: copy_pte_range
    write-protects the parent's PTEs but flushes only at the end, so a write
    fault meanwhile copies a page that another thread still writes through
    its stale TLB entry, and the write is lost (fb49c455323f, "fork: lock
    VMAs of the parent process when forking").  mmap_lock for write keeps
    out the faults that take it; the policy's dup_begin and dup_lock_vma
    keep out its own (dup_unlock_vma lets them in again after the flush)."""
    m, cpu, policy = w.mm, w.cpu, w.policy
    new = m.mm_alloc(cpu)
    if new < 0:
        w.count("nomm")
        return -1
    mmap_write_lock(w, oldmm)
    w.mem.store32(m.mm_off(oldmm, "forking"), 1)
    entries: list[tuple[int, int, int]] = []
    locked: list[int] = []
    ok = True
    try:
        if policy.dup_begin is not None:
            policy.dup_begin(w, oldmm)
        for s, e, v in m.index_entries(oldmm):
            if v == RESERVED:
                continue
            if policy.dup_lock_vma is not None:
                policy.dup_lock_vma(w, oldmm, v)
                locked.append(v)
            nv = m.vm_area_alloc(cpu, new, s, e, m.vma_field(cpu, v, "vm_flags", "dup_mmap") & (VM_READ | VM_WRITE))
            if nv is None:
                ok = False
                break
            m.anon_vma_fork(cpu, nv, v)
            entries.append((s, e, nv))
            cpu.window("dup_mmap:after-anon_vma_fork")
            if m.vma_field(cpu, v, "anon_vma", "vma_needs_copy") and not m.copy_page_range(cpu, new, oldmm, nv, s, e):
                ok = False
                break
        m.index_publish(cpu, new, entries)
        m.flush_tlb_mm(cpu, oldmm)
    finally:
        if policy.dup_unlock_vma is not None:
            for v in locked:
                policy.dup_unlock_vma(w, oldmm, v)
        w.mem.store32(m.mm_off(oldmm, "forking"), 0)
        policy.write_unlock(w, oldmm)
    if not ok:
        m.mmput(cpu, new)
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
    m.mmput(w.cpu, mm)
    w.count("exits")
