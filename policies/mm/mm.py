"""mm_struct, and the model every mechanism shares: `MmModel`.

`MmModel` is one process's handle on the modelled mm: its regions (mm_structs,
the VMA cache, the index arrays, the TLBs, global counters) live in the
scenario's segment; its page tables and pages live in the machine's page pool.
A mechanism declares `MmModel.regions()` in its scenario's regions, builds an `MmModel` in
`attach`, and writes its policies against it.

mm lifetime follows kernel/fork.c: mm_users counts the threads and the
mmget() references of remote accessors (/proc/pid/mem, ptrace); the last
mmput() runs exit_mmap(); mm_count keeps the struct itself.  mm 0 is the
multi-threaded process whose threads the CPUs are; forked children are
single-threaded and run under their task lock, one CPU at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from policies.mm.access import Access
from policies.mm.base import MM_DEAD, MM_EXITED, MM_FREE, MM_GLOBAL, MM_LIVE, MM_STRUCT
from policies.mm.checks import PIN_DIVERGED
from policies.mm.fault import Fault
from policies.mm.fork import Fork
from policies.mm.geometry import Geometry
from policies.mm.gup import FOLL_LONGTERM, FOLL_PIN, GUP_PIN, Gup
from policies.mm.madvise import Madvise
from policies.mm.pagewalk import PageWalk
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT, describe_entry, is_migration_entry, swp_offset
from policies.mm.ptlock import PTLOCK
from policies.mm.rmap import ZERO_SITE, ZERO_STAMP
from policies.mm.swap import SWAP_SLOT
from policies.mm.tlb import PWC_ENTRY, PWC_SIZE, TLB_ENTRY, TLB_PROMISE, TLB_SIZE
from policies.mm.vma import RESERVED, VM_BABY, VM_DETACHED, VMA, VMA_INDEX
from shm import GFP_KERNEL, Refcount, Region
from shm.layout import field_offsets
from shm.pool import PFN_MASK
from shm.slab import KmemCache


class MmModel(Fault, Madvise, Fork, Gup, Access, PageWalk):
    """The modelled mm in one process: mm_structs, VMAs, index, TLBs, page tables.

    A mechanism may run a variant of the model (a subclass overriding one of
    its kernel functions: vm_normal_page, zap_pte_range, add_mm_rss_vec,
    mm_dec_nr_ptes, unpin_user_page, wp_can_reuse_anon_folio, wp_can_reuse (do_wp_page's
    inlined test), folio_needs_cow_for_dma, gup_must_unshare, free_pgtables,
    free_pages_and_swap_cache, spf_walk, anon_vma_fork, mm_tlb_flush_nested,
    swapin_pte_same, free_swap_and_cache, migrate_vma_flush, migrate_vma_finalize_one,
    free_table; or a flag of the architecture, broadcast_tlbi): that is how a
    mutant of the model itself is written (policies/mm/broken.py)."""

    COUNTERS = (
        "cow_copies",
        "gup_unpins",
        "pins_kept",
        "pinned_reuses",
        "fork_pinned_copies",
        "gup_fast_fork_raced",
        "ptes_zapped",
        "zero_pages_zapped",
        "shared_tables_kept",
        "tables_freed",
        "tables_rcu_freed",
        "tlb_flush_nested",
        "pages_swapped_out",
        "pageout_pinned",
        "swapins",
        "swapin_raced",
        "swap_entries_zapped",
        "pages_migrated",
        "migrations_failed",
        "migration_waits",
        "get_task_mm_raced",
        "gup_fast_unhooked",
        "gup_fast_pmd_changed",
        "spf_no_table",
        "spf_ptl_busy",
        "spf_walk_unhooked",
        "fault_pmd_gone",
        "pte_map_retries",
        "ptes_walked",
        "walker_freed_table",
        "pwc_flushed",
        "table_batch_failed",
    )

    @staticmethod
    def regions(
        ncpus: int, geometry: Geometry, max_mms: int = 3, vma_slots: int = 96, index_slots: int = 48
    ) -> list[Region]:
        return [
            Region("mm", MM_STRUCT, max_mms),
            Region("mm_global", MM_GLOBAL),
            Region("tlb", TLB_ENTRY, (ncpus + 2) * TLB_SIZE),
            Region("pwc", PWC_ENTRY, (ncpus + 2) * PWC_SIZE),
            Region("tlb_promise", TLB_PROMISE, max_mms * geometry.pages),
            Region("swap_map", SWAP_SLOT, geometry.pages),
            Region("gup_pins", GUP_PIN, ncpus + 2),
            Region("pin_unmaps", np.dtype("<i8"), max_mms * geometry.pages),
            *KmemCache.regions("vma", VMA, vma_slots),
            *KmemCache.regions("vma_index", VMA_INDEX, index_slots),
            *KmemCache.regions("ptlock", PTLOCK, max_mms * geometry.pages // geometry.pte * 4 + 64),
        ]

    def __init__(
        self,
        w,
        geometry: Geometry,
        *,
        typesafe_vmas: bool = False,
        vma_free: Callable[[Any, int], None] | None = None,
        remove_tables: Callable[..., None] | None = None,
    ):
        """The model of one process; `vma_free` and `remove_tables` are the mechanism's hooks
        (MmPolicy; None: the kernel's baseline)."""
        machine = w.machine
        if w.pool.page_size < geometry.page_size_needed():
            raise ValueError(f"geometry {geometry} needs pages of {geometry.page_size_needed()} bytes")
        self.machine = machine
        self.count = w.count  # the scenario's counters (it declares the model's: MmModel.COUNTERS)
        self.geometry = geometry
        self.ncpus = w.ncpus
        self.pool = w.pool
        self.page_mem = machine.mem
        self.mm_mem = w.mem
        self._vma_free = vma_free
        self._remove_tables = remove_tables
        self.seg_index = w.seg_index
        self.page_size = self.pool.page_size
        self.pool_data0 = self.pool.data0
        lay = w.seg.layout
        self.mm_stride = lay.stride("mm")
        self.mm0 = lay.offset("mm")
        self.max_mms = lay.regions["mm"].count
        self._mm_fields = field_offsets(MM_STRUCT)
        self.pgd_field = self._mm_fields["pgd"]
        self.rss_field = self._mm_fields["rss"]
        self.page0 = self.pool.page0
        self.walker = self.pool.walker(FLAG_BITS, PTE_PRESENT)
        self._global = {f: lay.offset("mm_global", 0, f) for f in field_offsets(MM_GLOBAL)}
        self.tlb0 = lay.offset("tlb")
        self.pwc0 = lay.offset("pwc")
        self.tlb_epoch_off = self._global["tlb_epoch"]
        self.promise0 = lay.offset("tlb_promise")
        self.flush_upto = 0
        self.swap0 = lay.offset("swap_map")
        self.swap_slots = lay.regions["swap_map"].count
        self.swap_map = w.seg.view("swap_map")
        self.pins0 = lay.offset("gup_pins")
        self.pin_unmaps0 = lay.offset("pin_unmaps")
        self.pin_slots = lay.regions["gup_pins"].count
        self.mms = w.seg.view("mm")
        self._mmap_locks = [None] * self.max_mms
        self.vma_cache = KmemCache(machine, w.seg_index, "vma", typesafe_by_rcu=typesafe_vmas)
        self.index_cache = KmemCache(machine, w.seg_index, "vma_index")
        self.ptlock_cache = KmemCache(machine, w.seg_index, "ptlock")
        self.zero_page = 0

    def attach(self) -> None:
        self.zero_page = self.mm_mem.load64(self._global["zero_ref"])

    # -- boot ---------------------------------------------------------------------
    def setup(self, cpu, threads: int) -> None:
        """The caches, the zero page and mm 0 with `threads` threads (the boot CPU)."""
        self.vma_cache.init()
        self.index_cache.init()
        self.ptlock_cache.init()
        zero = self.pool.alloc_page(cpu, GFP_KERNEL, ZERO_SITE)
        if zero is None:
            raise RuntimeError("no page for the zero page: the pool is empty at setup")
        self.page_mem.store64(self.pool.data_off(zero & 0xFFFFFF, 0), ZERO_STAMP)
        self.mm_mem.store64(self._global["zero_ref"], zero)
        self.zero_page = zero
        self.mms["state"] = MM_FREE
        mm = self.mm_alloc(cpu)
        self.mm_set_live(mm)
        self.mm_mem.store32(self.mm_off(mm, "mm_users"), threads)
        self.mm_mem.store32(self.mm_off(mm, "nr_threads"), threads)

    # -- lifetime -----------------------------------------------------------------
    def mm_alloc(self, cpu) -> int:
        """mm_alloc(): a free mm_struct with a pgd, one user and one count; -1 if none is free.

        Nobody else sees it until mm_set_live()."""
        for mm in range(self.max_mms):
            off = self.mm_off(mm, "state")
            if self.mm_mem.load32(off) == MM_FREE and self.mm_mem.cmpxchg32(off, MM_FREE, MM_DEAD) == MM_FREE:
                break
        else:
            return -1
        pgd = self.pgd_alloc(cpu)
        if pgd is None:
            self.mm_mem.store32(off, MM_FREE)
            return -1
        s = self.mm_mem
        s.fetch_add32(self.mm_off(mm, "gen"), 1)
        for f in ("forking", "mm_lock_seq", "flags", "tlb_flush_pending"):
            s.store32(self.mm_off(mm, f), 0)
        for f in ("index", "rss", "swapents", "pgtable_bytes", "pgtable_list"):
            s.store64(self.mm_off(mm, f), 0)
        s.store64(self.mm_off(mm, "pgd"), pgd)
        s.store32(self.mm_off(mm, "mm_users"), 1)
        s.store32(self.mm_off(mm, "nr_threads"), 1)
        s.store32(self.mm_off(mm, "mm_count"), 1)
        return mm

    def mm_set_live(self, mm: int) -> None:
        """The new mm's task starts running (wake_up_new_task): other CPUs may now use it."""
        self.mm_mem.store32(self.mm_off(mm, "state"), MM_LIVE)

    def get_task_mm(self, cpu, mm: int) -> int:
        """get_task_mm(): the id (generation and slot) of the task's mm with a reference taken, or
        0.  The kernel reads task->mm under task_lock, which exit_mm takes to clear it; the
        model's task lock is held across a whole operation of the child, so here the mm's id is
        read before the reference and checked after: a slot freed and reused by another mm
        meanwhile gives the reference back."""
        mmid = self.mm_id(mm)
        if self.mm_state(mm) != MM_LIVE:
            return 0
        cpu.window("get_task_mm:before-mmget")
        if not self.mmget_not_zero(cpu, mm):
            return 0
        if self.mm_id(mm) != mmid:
            self.count("get_task_mm_raced")
            self.mmput(cpu, mm)
            return 0
        return mmid

    def mmget_not_zero(self, cpu, mm: int) -> bool:
        return self._lock(Refcount, "mm_users", mm).inc_not_zero(cpu)

    def mmput(self, cpu, mm: int) -> None:
        """mmput(): the last user runs exit_mmap() and drops the mm_count it held."""
        if self._lock(Refcount, "mm_users", mm).dec_and_test(cpu):
            self.exit_mmap(cpu, mm)
            self.mmdrop(cpu, mm)

    def mmdrop(self, cpu, mm: int) -> None:
        if self._lock(Refcount, "mm_count", mm).dec_and_test(cpu):
            self.mm_mem.store32(self.mm_off(mm, "state"), MM_FREE)

    def exit_mmap(self, cpu, mm: int) -> None:
        """exit_mmap(): nobody uses the mm any more; tear down every VMA and table."""
        self.mm_mem.store32(self.mm_off(mm, "state"), MM_DEAD)
        lock = self.mmap_lock(mm)
        lock.down_write(cpu)
        entries = self.index_entries(mm)
        self.index_clear(cpu, mm)
        tlb = self.tlb_gather_mmu(cpu, mm, fullmm=True)
        for s, e, v in entries:
            if v != RESERVED:
                self.vma_set_flags(v, VM_DETACHED)
            self.zap_page_range(cpu, tlb, s, e, vmas=() if v == RESERVED else (v,))
        self.free_pgtables(cpu, mm, 0, self.geometry.pages, 0, self.geometry.pages)
        self.tlb_finish_mmu(cpu, tlb)
        for _, _, v in entries:
            if v != RESERVED:
                self.remove_vma(cpu, v)
        self.free_pgd(cpu, mm)
        lock.up_write(cpu)

    # -- a driver's long-term pins (gup.py keeps them) -------------------------------
    def release_pin(self, cpu, cpu_id: int) -> None:
        """The driver lets go of slot `cpu_id`'s pin: check what it held, then unpin."""
        _, writes, mmid, mm, vpn, gup_flags, unmaps = self.held_pin(cpu_id)
        ref = self.take_pin(cpu_id)
        if not ref:
            return
        what = "unpin_user_page: the driver releases its long-term pin"
        self.check_foreign_write(cpu, mm, mmid, ref, writes, what)
        if gup_flags & FOLL_PIN and gup_flags & FOLL_LONGTERM:
            self.check_pin(cpu, mm, mmid, vpn, ref, unmaps)
        self.unpin_user_page(cpu, ref, gup_flags)

    def release_all_pins(self, cpu) -> None:
        for i in range(self.pin_slots):
            self.release_pin(cpu, i)

    def check_pin(self, cpu, mm: int, mmid: int, vpn: int, ref: int, unmaps: int) -> None:
        """A long-term FOLL_PIN page is the page its mm maps at vpn for as long as the pin lasts,
        unless the mm unmapped it (munmap, MADV_DONTNEED, exit: pinned_unmaps moved; counted per
        address, so a later unmap there of another pinned page hides an earlier divergence).
        Checked with the mm held, under mmap_lock and the ptl, through a VMA that covers vpn, as
        a walker must (a detached range's tables are freed under mmap_lock for read); the record
        is read after the PTE, so a zap that cleared it is seen."""
        if self.get_task_mm(cpu, mm) != mmid:
            return
        lock = self.mmap_lock(mm)
        lock.down_read(cpu)
        try:
            vma = self.vma_lookup(cpu, mm, vpn)
            if not vma or self.vma_field(cpu, vma, "vm_flags", "check_pin") & VM_BABY:
                return  # unmapped, or being torn down without mmap_lock: its tables may be going
            table, ptl = self.pte_tryget_map_lock(cpu, mm, vpn)
            pte = 0
            if table:
                pte = self.page_mem.load64(self.table_off(table, vpn % self.geometry.pte))
                ptl.unlock(cpu)
                self.pte_put(cpu, mm, table, vpn)
            unmapped = self.pinned_unmaps(mm, vpn) != unmaps
        finally:
            lock.up_read(cpu)
            self.mmput(cpu, mm)
        pfn = ref & PFN_MASK
        if pte & PTE_PRESENT:
            maps = (pte >> FLAG_BITS) & PFN_MASK == pfn
        else:
            maps = is_migration_entry(pte) and swp_offset(pte) & PFN_MASK == pfn
        if not maps and not unmapped:
            mapcount = self.page_mem.load32(self._page_word(ref, "_mapcount")) + 1
            cpu.report(
                PIN_DIVERGED,
                f"page {pfn}, FOLL_PIN pinned from mm {mm} at vpn {vpn}, which mm {mm} never unmapped, "
                f"now maps {describe_entry(pte)} there (the pinned page has {mapcount} mapping(s)): "
                "copy-on-write moved the process off its pinned page",
                mm=mm,
                vpn=vpn,
                **self.pool.describe(pfn),
            )

    def free_zero_page(self, cpu) -> None:
        ref = self.mm_mem.xchg64(self._global["zero_ref"], 0)
        if ref:
            self.pool.free_page(cpu, ref, ZERO_SITE)

    def live_mms(self) -> list[int]:
        return [mm for mm in range(self.max_mms) if self.mm_state(mm) in (MM_LIVE, MM_EXITED)]


class BroadcastTlbiModel(MmModel):
    """The model on an architecture whose TLB flush is a broadcast instruction, not an IPI
    (arm64; x86 under a hypervisor's flush): page tables must be freed by RCU
    (MMU_GATHER_RCU_TABLE_FREE) or after tlb_remove_table_sync_one's IPI."""

    broadcast_tlbi = True
