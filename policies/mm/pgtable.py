"""Page tables: three levels (pgd, pmd, pte) of int64 entries in pool pages.

An entry is ``ref << 8 | flags``: the pool reference (generation and pfn) of
the table or page it points to, so that a walker holding an entry notices
when the page behind it was freed or reused.  Each table is one pool page,
its split ptl is the page's `ptl` (mm/memory.c: pte_lockptr), and the pmd
level is protected by mm->page_table_lock (no split pmd locks).

Upper levels are installed and cleared under page_table_lock; PTEs under the
table's ptl.  Walkers that take no lock (the MMU, fast GUP) read entries with
plain loads and rely on interrupts being off for the table to stay: a table
is freed only after an IPI every CPU acknowledged (mm/mmu_gather.c:
tlb_remove_table_sync_one), or after an RCU grace period, which a CPU with
interrupts off holds back (tlb_remove_table).
"""

from __future__ import annotations

from typing import Any

from policies.mm.base import MmBase
from policies.mm.checks import WALK_FREED_TABLE
from shm import GFP_KERNEL, Spinlock, alloc_site
from shm.pool import PFN_MASK

_PRESENT, _WRITE, _DIRTY, _SPECIAL, _HUGE, _SWAP, _COW_SHARED = 1, 2, 4, 8, 16, 32, 64
PTE_PRESENT = _PRESENT
PTE_WRITE = _WRITE
PTE_DIRTY = _DIRTY
PTE_SPECIAL = _SPECIAL
PTE_HUGE = _HUGE
PTE_SWAP = _SWAP
PTE_COW_SHARED = _COW_SHARED
FLAG_BITS = 8
FLAG_MASK = (1 << FLAG_BITS) - 1
FLAG_NAMES = {
    _PRESENT: "present",
    _WRITE: "write",
    _DIRTY: "dirty",
    _SPECIAL: "special",
    _HUGE: "huge",
    _SWAP: "swap",
    _COW_SHARED: "cow-shared",
}

# A non-present entry that is not none (include/linux/swapops.h): _SWAP set, _PRESENT clear,
# its type in bits 1-3 (where a present entry's WRITE and DIRTY are: test _PRESENT first),
# and above FLAG_BITS the swap slot or, for a migration entry, the page's reference (pfn
# and generation).  Device-private entries (ZONE_DEVICE) are encoded here for the
# mechanism that brings device memory.
SWP_SWAPFILE, SWP_MIGRATION_READ, SWP_MIGRATION_WRITE, SWP_DEVICE_PRIVATE_READ, SWP_DEVICE_PRIVATE_WRITE = range(5)
SWP_TYPE_NAMES = ("swap", "migration", "migration-write", "device-private", "device-private-write")

PGD_SITE = alloc_site("mm: pgd_alloc")
PMD_SITE = alloc_site("mm: pmd_alloc")
PTE_SITE = alloc_site("mm: pte_alloc_one")


def mk_pte(ref: int, flags: int) -> int:
    return ref << FLAG_BITS | flags


def pte_ref(entry: int) -> int:
    return entry >> FLAG_BITS


def pte_pfn(entry: int) -> int:
    return (entry >> FLAG_BITS) & PFN_MASK


def swp_entry(type_: int, offset: int) -> int:
    """A non-present entry of `type_` naming `offset` (a swap slot, or a page's reference)."""
    return offset << FLAG_BITS | type_ << 1 | _SWAP


def is_swap_pte(entry: int) -> bool:
    """Neither none nor present: a swap, migration or device-private entry."""
    return bool(entry & _SWAP)


def swp_type(entry: int) -> int:
    return (entry >> 1) & 7


def swp_offset(entry: int) -> int:
    return entry >> FLAG_BITS


def is_migration_entry(entry: int) -> bool:
    return bool(entry & _SWAP) and swp_type(entry) in (SWP_MIGRATION_READ, SWP_MIGRATION_WRITE)


def describe_entry(entry: int) -> str:
    if not entry:
        return "none"
    if entry & _SWAP:
        what = SWP_TYPE_NAMES[swp_type(entry)] if swp_type(entry) < len(SWP_TYPE_NAMES) else "bad-type"
        if swp_type(entry) == SWP_SWAPFILE:
            return f"{what} entry, slot {swp_offset(entry)}"
        return f"{what} entry, pfn {pte_pfn(entry)} gen {pte_ref(entry) >> 24}"
    flags = "|".join(n for b, n in FLAG_NAMES.items() if entry & b)
    return f"pfn {pte_pfn(entry)} gen {pte_ref(entry) >> 24} [{flags}]"


class PageTables(MmBase):
    """pgd/pmd/pte allocation, walking and freeing: the model's second layer."""

    def pgd_alloc(self, cpu) -> int | None:
        ref = self.pool.alloc_page(cpu, GFP_KERNEL, PGD_SITE)
        if ref is not None:
            self._zero_table(ref)
        return ref

    def _zero_table(self, ref: int) -> None:
        self.page_mem.fill(self.table_off(ref, 0), self.page_size, 0)

    def table_off(self, table_ref: int, index: int) -> int:
        return self.pool_data0 + (table_ref & PFN_MASK) * self.page_size + 8 * index

    def read_entry(self, cpu, table_ref: int, index: int, what: str) -> int:
        """A checked load of one entry: walking a freed table is a use-after-free."""
        walker = self.walker
        v = walker.load(table_ref, index)
        if walker.stale:
            self.pool._report_uaf(cpu, table_ref, what, WALK_FREED_TABLE)
        return v

    def walk_pmd(self, cpu, mm: int, vpn: int, what: str) -> tuple[int, int]:
        """(pmd table ref, pmd index) for vpn, or (0, 0) if no pmd table; no lock taken."""
        e = self.walk(cpu, mm, vpn, what, 1)
        if not e & _PRESENT:
            return 0, 0
        return e >> FLAG_BITS, vpn // self.geometry.pte % self.geometry.pmd

    def walk_pte_table(self, cpu, mm: int, vpn: int, what: str) -> int:
        """The PTE table covering vpn, read without locks (the MMU's walk, fast GUP's)."""
        e = self.walk(cpu, mm, vpn, what, 2)
        return e >> FLAG_BITS if e & _PRESENT else 0

    def walk(self, cpu, mm: int, vpn: int, what: str, levels: int = 3, report: bool = True) -> int:
        """The entry `levels` deep on the way to vpn (3: the PTE), with no lock, checking each
        table it reads as read_entry does (unless `report` is False: a diagnostic look that
        must not become a finding of its own); 0 where the walk stops."""
        g = self.geometry
        walker = self.walker
        pgd = self.mm_mem.load64(self.mm0 + mm * self.mm_stride + self.pgd_field)
        if levels == 3:
            e = walker.walk(pgd, vpn // g.pmd_span, vpn // g.pte % g.pmd, vpn % g.pte)
        elif levels == 2:
            e = walker.walk(pgd, vpn // g.pmd_span, vpn // g.pte % g.pmd)
        else:
            e = walker.walk(pgd, vpn // g.pmd_span)
        if not e and report and walker.stale:
            self.pool._report_uaf(cpu, walker.freed, what, WALK_FREED_TABLE)
        return e

    def pte_alloc(self, cpu, mm: int, vpn: int) -> int:
        """pmd_alloc + __pte_alloc: make sure the tables for vpn exist; the PTE table or 0 on OOM."""
        return self.pmd_pte_alloc(cpu, mm, vpn)[2]

    def pmd_pte_alloc(self, cpu, mm: int, vpn: int) -> tuple[int, int, int]:
        """(pmd table, pmd index, PTE table) for vpn, allocating what is missing; PTE table 0 on OOM.

        A new table is allocated before the lock (it may sleep) and freed
        again if another CPU installed one first, as mm/memory.c does."""
        pmd = self.pmd_alloc(cpu, mm, vpn)
        if not pmd:
            return 0, 0, 0
        i = vpn // self.geometry.pte % self.geometry.pmd
        e = self.read_entry(cpu, pmd, i, "pte_alloc: walk")
        table = e >> FLAG_BITS if e & _PRESENT else self._alloc_level(cpu, mm, pmd, i, PTE_SITE)
        return pmd, i, table

    def pmd_alloc(self, cpu, mm: int, vpn: int) -> int:
        """pmd_alloc(): the pmd table for vpn, allocated if missing; 0 on OOM."""
        g = self.geometry
        pgd = self.mm_mem.load64(self.mm0 + mm * self.mm_stride + self.pgd_field)
        e = self.read_entry(cpu, pgd, vpn // g.pmd_span, "pmd_alloc: walk")
        return e >> FLAG_BITS if e & _PRESENT else self._alloc_level(cpu, mm, pgd, vpn // g.pmd_span, PMD_SITE)

    def _alloc_level(self, cpu, mm: int, table: int, index: int, site: int) -> int:
        e = self.read_entry(cpu, table, index, "pte_alloc: walk")
        if e & _PRESENT:
            return e >> FLAG_BITS
        new = self.pte_alloc_one(cpu, mm, site)
        if new is None:
            return 0
        cpu.window("__pte_alloc:before-pmd_lock")
        ptl = self.page_table_lock(mm)
        ptl.lock(cpu)
        off = self.table_off(table, index)
        e = self.page_mem.load64(off)
        if not e & _PRESENT:
            self.pmd_populate(mm, off, new)
            ptl.unlock(cpu)
            return new
        ptl.unlock(cpu)
        self.pte_free_one(cpu, new, site)
        return e >> FLAG_BITS

    def pte_alloc_one(self, cpu, mm: int, site: int = PTE_SITE) -> int | None:
        """pte_alloc_one(): a zeroed table page for mm (page->pt_mm set), or None; it may sleep."""
        new = self.pool.alloc_page(cpu, GFP_KERNEL, site)
        if new is None:
            return None
        self._zero_table(new)
        self.pool.mem.store64(self.pool.field_off(new & PFN_MASK, "private"), self.mm_id(mm))
        if site == PTE_SITE and not self.ptlock_alloc(cpu, new):  # pagetable_pte_ctor()
            self.pool.free_page(cpu, new, site)
            return None
        return new

    def pte_free_one(self, cpu, table: int, site: int = PTE_SITE) -> None:
        """pte_free(): pagetable_dtor() (the ptl goes with the table) and the page freed."""
        if site == PTE_SITE:
            self.ptlock_free(cpu, table)
        self.pool.free_page(cpu, table, site)

    def pte_lockptr(self, cpu, table: int) -> Spinlock:
        """pte_lockptr(): the table's split ptl, here in its struct page (spinlock_t fits:
        ALLOC_SPLIT_PTLOCKS off); policies/mm/ptlock.py allocates it beside the table."""
        return self.pool.ptl(table & PFN_MASK)

    def ptlock_alloc(self, cpu, table: int) -> bool:
        """ptlock_alloc(): nothing to allocate when the ptl is in struct page."""
        return True

    def ptlock_free(self, cpu, table: int) -> None:
        """ptlock_free(): nothing to free when the ptl is in struct page."""

    def pmd_populate(self, mm: int, off: int, new: int) -> None:
        """pmd_populate() and mm_inc_nr_ptes(), under the pmd lock: the entry at `off` maps `new`."""
        self.page_mem.store64(off, mk_pte(new, _PRESENT))
        self.mm_mem.fetch_add64(self.mm_off(mm, "pgtable_bytes"), self.page_size)

    def table_mm(self, table: int) -> int:
        """page->pt_mm: the id (generation and slot) of the mm a page table was allocated for."""
        return self.page_mem.load64(self.pool.field_off(table & PFN_MASK, "private"))

    def pte_offset_map(self, cpu, pmd: tuple[int, int], vpn: int) -> int | None:
        """pte_offset_map() and ptep_get_lockless(): vpn's PTE, read in the rcu_read_lock section
        in which the pmd entry was read (6.5, __pte_offset_map: mm/pgtable-generic.c); None if
        the pmd holds no table now, and the caller retries.  A table freed by RCU (pt_reclaim's,
        free_pgtables' with MMU_GATHER_RCU_TABLE_FREE) cannot go while it is being read."""
        rcu = self.machine.rcu
        rcu.read_lock(cpu)
        try:
            e = self.read_entry(cpu, pmd[0], pmd[1], "pte_offset_map")
            if not e & _PRESENT:
                self.count("fault_pmd_gone")
                return None
            return self.read_entry(cpu, e >> FLAG_BITS, vpn % self.geometry.pte, "pte_offset_map")
        finally:
            rcu.read_unlock(cpu)

    def pte_offset_map_lock(self, cpu, mm: int, vpn: int, pmd: tuple[int, int] | None = None) -> tuple[int, Any]:
        """pte_offset_map_lock(): the PTE table and its ptl, locked; (0, None) if there is none.

        `pmd` is the fault's vmf->pmd (table, index) when it has one.  As since
        6.5 (__pte_offset_map), the pmd entry is read under rcu_read_lock, so a
        table freed by RCU cannot go before its ptl is taken; then the pmd is
        checked again, since tables can be freed without mmap_lock.  Taking
        the ptl of a table already freed is a use-after-free."""
        rcu = self.machine.rcu
        while True:
            rcu.read_lock(cpu)
            if pmd is None:
                table, i = self.walk_pmd(cpu, mm, vpn, "pte_offset_map_lock")
                if not table:
                    rcu.read_unlock(cpu)
                    return 0, None
            else:
                table, i = pmd
            off = self.pool_data0 + (table & PFN_MASK) * self.page_size + 8 * i
            e = self.read_entry(cpu, table, i, "pte_offset_map_lock")
            if not e & _PRESENT:
                rcu.read_unlock(cpu)
                return 0, None
            ptl = self.pte_lockptr(cpu, e >> FLAG_BITS)
            ptl.lock(cpu)
            rcu.read_unlock(cpu)
            if not self.pool.alive(e >> FLAG_BITS):
                self.pool._report_uaf(cpu, e >> FLAG_BITS, "pte_offset_map_lock: spin_lock(ptl)", WALK_FREED_TABLE)
                ptl.unlock(cpu)
                return 0, None
            if self.pmd_same(e, off):
                return e >> FLAG_BITS, ptl
            ptl.unlock(cpu)
            self.count("pte_map_retries")

    def pmd_same(self, pmdval: int, off: int) -> bool:
        """pmd_same(pmdval, pmdp_get_lockless(pmd)): under the ptl, the pmd at `off` still maps
        the table read under RCU (not unhooked, not replaced)."""
        return self.page_mem.load64(off) == pmdval

    # -- the pte_ref seed's helpers with CONFIG_FREE_USER_PTE off: a PTE table lives until
    # free_pgtables (or pt_reclaim) frees it, and nobody counts who uses it
    # (Qi Zheng, "[PATCH v3 14/15] Documentation: add document for pte_ref", section 4).
    def pte_alloc_get(self, cpu, mm: int, vpn: int) -> tuple[int, int, int]:
        """pte_alloc_get(): the fault's PTE table, allocated if missing, and a reference on it."""
        return self.pmd_pte_alloc(cpu, mm, vpn)

    def pte_tryget_map_lock(self, cpu, mm: int, vpn: int, pmd: tuple[int, int] | None = None) -> tuple[int, Any]:
        """pte_tryget_map_lock(): a walker's reference on the table (pte_try_get), then
        pte_offset_map_lock(); (0, None) if there is no table to walk."""
        return self.pte_offset_map_lock(cpu, mm, vpn, pmd)

    def pte_get(self, cpu, table: int) -> None:
        """pte_get(): an entry of `table` went from none to not none (under its ptl)."""

    def pte_get_many(self, cpu, table: int, nr: int) -> None:
        """pte_get_many(): `nr` entries of `table` went from none to not none."""

    def pte_put(self, cpu, mm: int, table: int, vpn: int) -> bool:
        """pte_put(): a visitor is done with `table`, after its ptl was dropped; True if that
        freed the table."""
        return self.pte_put_many(cpu, mm, table, vpn, 1)

    def pte_put_many(self, cpu, mm: int, table: int, vpn: int, nr: int) -> bool:
        """pte_put_many(): `nr` entries cleared (or visitors gone); True if the table was freed."""
        return False

    def pte_put_vmf(self, cpu, vmf) -> None:
        """pte_put_vmf(): the fault drops the reference pte_alloc_get took (FAULT_FLAG_PTE_GET)."""

    def sweep_tables(self, cpu, tables) -> None:
        """At a quiescent point, every live PTE table (numpy rows: table, pmd table, pmd index, mm):
        what a mechanism keeping state per table checks against the tables (the base keeps none)."""

    def free_pgd(self, cpu, mm: int) -> None:
        pgd = self.mm_mem.xchg64(self.mm_off(mm, "pgd"), 0)
        if pgd:
            self.pool.free_page(cpu, pgd, PGD_SITE)
