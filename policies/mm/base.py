"""What every part of the mm model shares: mm_struct's layout, the model's state, its handles.

The model is one class built in layers, each a file named after the kernel's:
this base (mm_struct and the handles of its locks), page tables
(pgtable.py), VMAs and their index (vma.py), TLBs (tlb.py), struct page and
rmap (rmap.py), swap slots and the page lock (swap.py); on those, side by
side, the fault handler (fault.py) with page migration on it (migrate.py),
the mmu_gather (mmu_gather.py) with zap and free_pgtables on it
(zap.py) and madvise on that (madvise.py), fork's copy
(fork.py), GUP (gup.py) and the
CPU's own accesses (access.py); and the mm lifecycle that puts them
together (mm.py: `MmModel`).  Each layer may call the ones below it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from policies.mm.checks import MM_UAF
from policies.mm.geometry import Geometry
from shm import MUTEX, RWSEM, SEQCOUNT, SPINLOCK, Machine, Mutex, Refcount, Rwsem, Seqcount, Spinlock
from shm.events import address
from shm.slab import KmemCache

if TYPE_CHECKING:
    from shm import Memory, Pool, Walker

MM_FREE, MM_LIVE, MM_EXITED, MM_DEAD = 0, 1, 2, 3
MM_STATES = ("free", "live", "exited", "dead")

MM_STRUCT = np.dtype(
    [
        ("state", "<i4"),
        ("gen", "<i4"),
        ("mm_users", "<i4"),
        ("mm_count", "<i4"),
        ("nr_threads", "<i4"),
        ("forking", "<i4"),
        ("mm_lock_seq", "<i4"),
        ("flags", "<i4"),
        ("tlb_flush_pending", "<i4"),
        ("write_protect_seq", SEQCOUNT),
        ("mmap_lock", RWSEM),
        ("page_table_lock", SPINLOCK),
        ("context_lock", SPINLOCK),
        ("task_lock", MUTEX),
        ("pgd", "<i8"),
        ("index", "<i8"),
        ("rss", "<i8"),
        ("swapents", "<i8"),
        ("pgtable_bytes", "<i8"),
        ("pgtable_list", "<i8"),
    ],
    align=True,
)

MM_GLOBAL = np.dtype(
    [
        ("next_anon_vma", "<i4"),
        ("pad", "<i4"),
        ("zero_ref", "<i8"),
        ("tlb_epoch", "<i8"),
        ("swap_hint", "<i4"),
        ("pad2", "<i4"),
    ]
)


class MmBase:
    """The model's state in one process (set by MmModel.__init__) and mm_struct's handles."""

    machine: Machine
    count: Callable[..., None]
    geometry: Geometry
    ncpus: int
    pool: Pool
    page_mem: Memory  # the machine's memory: the page pool, where page tables and pages are
    mm_mem: Memory  # the scenario's segment: mm_structs, VMAs, the index, the TLBs
    seg_index: int
    page_size: int
    pool_data0: int
    page0: int
    walker: Walker  # checked loads of page-table entries (pgtable.py)
    mm_stride: int
    mm0: int
    max_mms: int
    pgd_field: int
    rss_field: int
    tlb0: int
    pwc0: int  # the CPUs' paging-structure caches (tlb.py)
    tlb_epoch_off: int
    flush_upto: int  # the TLB epoch this CPU's last tlb_finish_mmu flushed up to
    promise0: int
    pins0: int  # the drivers' long-term pins, a slot per CPU (gup.py)
    pin_slots: int
    pin_unmaps0: int  # per (mm, vpn): unmaps of a maybe-pinned page by its mm (rmap.py)
    mms: np.ndarray
    vma_cache: KmemCache
    index_cache: KmemCache
    ptlock_cache: KmemCache  # split ptls allocated beside their tables (ptlock.py), if the model does
    zero_page: int
    _vma_free: Callable[[Any, int], None] | None  # the mechanism's hooks (MmPolicy)
    _remove_tables: Callable[..., None] | None
    _mm_fields: dict[str, int]
    _global: dict[str, int]
    _mmap_locks: list[Rwsem | None]

    # -- addresses and handles ---------------------------------------------------
    def mm_off(self, mm: int, field: str) -> int:
        return self.mm0 + mm * self.mm_stride + self._mm_fields[field]

    def global_off(self, name: str) -> int:
        return self._global[name]

    def mm_id(self, mm: int) -> int:
        return self.mm_mem.load32(self.mm0 + mm * self.mm_stride + 4) << 8 | mm

    def _lock(self, cls: type, field: str, mm: int):
        return self.machine.handle(cls, self.seg_index, self.mm_off(mm, field))

    def mmap_lock(self, mm: int) -> Rwsem:
        """mm->mmap_lock (on every fault's path: resolved once per mm)."""
        h = self._mmap_locks[mm]
        if h is None:
            h = self._mmap_locks[mm] = self._lock(Rwsem, "mmap_lock", mm)
        return h

    def page_table_lock(self, mm: int) -> Spinlock:
        return self._lock(Spinlock, "page_table_lock", mm)

    def write_protect_seq(self, mm: int) -> Seqcount:
        """mm->write_protect_seq: odd while fork write-protects the mm's anon pages (FOLL_PIN
        fast GUP backs off)."""
        return self._lock(Seqcount, "write_protect_seq", mm)

    def task_lock(self, mm: int) -> Mutex:
        return self._lock(Mutex, "task_lock", mm)

    def vma_refcount(self, vma: int) -> Refcount:
        return self.machine.handle(Refcount, self.seg_index, self.vma_cache.off(vma, "vm_refcnt"))

    def vma_refcount_addr(self, vma: int) -> int:
        return address(self.seg_index, self.vma_cache.off(vma, "vm_refcnt"))

    def vma_lock(self, vma: int) -> Rwsem:
        return self.machine.handle(Rwsem, self.seg_index, self.vma_cache.off(vma, "vm_lock"))

    def mm_check(self, cpu, mmid: int, what: str) -> bool:
        """The mm `mmid` names (from mm_id) is still that mm: not freed, its slot not reused.  A
        holder of an mm reference (mmget, mmgrab) that finds otherwise used a freed mm_struct."""
        mm = mmid & 0xFF
        state = self.mm_state(mm)
        now = self.mm_id(mm)
        if state != MM_FREE and now == mmid:
            return True
        cpu.report(
            MM_UAF,
            f"{what}: mm {mm} generation {mmid >> 8} was freed"
            + ("" if state == MM_FREE else f" and its slot reused (generation {now >> 8})"),
            mm=mm,
            state=MM_STATES[state],
        )
        return False

    def mm_state(self, mm: int) -> int:
        return self.mm_mem.load32(self.mm_off(mm, "state"))
