"""mm/migrate.c and mm/migrate_device.c: migration entries, and migrate_vma.

A migration replaces each PTE of an exclusive anonymous page by a migration
entry naming the page, which it holds locked; flushes; copies the page; and
puts a PTE to the copy back where the entry still is (remove_migration_pte),
or to the old page if it could not move.  A fault on the entry waits for the
unlock.  The model migrates under mmap_lock for read, as a driver's
migrate_vma_setup() does, and one mm's range at a time (the kernel reaches
every mapping through rmap; the pages it takes are exclusive, so there is
one).
"""

from __future__ import annotations

from policies.mm.pgtable import (
    PTE_PRESENT,
    PTE_WRITE,
    SWP_MIGRATION_READ,
    SWP_MIGRATION_WRITE,
    mk_pte,
    swp_entry,
    swp_offset,
    swp_type,
)
from policies.mm.rmap import ANON_SITE, LAST_WRITER
from policies.mm.vmf import Vmf, VmFault
from shm import GFP_NOWAIT
from shm.pool import PAGE_STRIDE, PFN_MASK


class Migrate(VmFault):
    """Migration entries: the wait, the restore, and migrate_vma."""

    def migration_entry_wait(self, cpu, vmf: Vmf, orig: int) -> None:
        """migration_entry_wait(): under the ptl, the entry is still there; then, without the ptl
        and without a reference, wait for the migration to unlock the page, which it holds
        until then (migration_entry_wait_on_locked, 6.0+).  The fault returns and retries."""
        table, ptl = self.pte_map_lock(cpu, vmf)
        if not table:
            return
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if self.page_mem.load64(off) != orig or not self.check_migration_entry(cpu, vmf.mm, vmf.vpn, orig):
            ptl.unlock(cpu)
            return
        ptl.unlock(cpu)
        self.count("migration_waits")
        self.folio_wait_locked(cpu, swp_offset(orig))

    def remove_migration_pte(self, cpu, vmf: Vmf, entry: int, dst: int) -> bool:
        """remove_migration_pte(): under the ptl, the migration entry replaced by a PTE to `dst`
        (the new page, or the old one if it could not move); False if it was zapped meanwhile."""
        table, ptl = self.pte_tryget_map_lock(cpu, vmf.mm, vmf.vpn)
        if not table:
            return False
        try:
            return self._remove_migration_pte(cpu, vmf, entry, dst, table, ptl)
        finally:
            self.pte_put(cpu, vmf.mm, table, vmf.vpn)

    def _remove_migration_pte(self, cpu, vmf: Vmf, entry: int, dst: int, table: int, ptl) -> bool:
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if self.page_mem.load64(off) != entry:
            ptl.unlock(cpu)
            return False
        if dst != swp_offset(entry):
            self.check_lost_write(cpu, swp_offset(entry), dst, vmf, "migrate")
        writable = swp_type(entry) == SWP_MIGRATION_WRITE
        exclusive = writable or self.page_anon_exclusive(swp_offset(entry))
        anon = self.mm_mem.load32(self.vma_off(vmf.vma, "anon_vma"))
        self.page_add_anon_rmap(dst, anon, vmf.vpn, exclusive=exclusive)
        self.pool.refcount(dst & PFN_MASK).inc(cpu)
        self.page_mem.store64(off, mk_pte(dst, PTE_PRESENT | (PTE_WRITE if writable else 0)))
        ptl.unlock(cpu)
        return True

    def migrate_vma(self, cpu, mm: int, start: int, end: int) -> int:
        """migrate_vma_setup(), migrate_vma_pages(), migrate_vma_finalize() over each VMA's part of
        mm's [start, end), a page table at a time; how many pages moved."""
        lock = self.mmap_lock(mm)
        lock.down_read(cpu)
        moved = 0
        try:
            for s, e, v in self.index_parts(mm, start, end, per_table=True):
                moved += self._migrate_table(cpu, mm, v, s, e)
        finally:
            lock.up_read(cpu)
        return moved

    def _migrate_table(self, cpu, mm: int, vma: int, start: int, end: int) -> int:
        collected = self.migrate_vma_collect_pmd(cpu, mm, start, end)
        if not collected:
            return 0
        cpu.window("migrate_vma:collected")
        moved = 0
        for vpn, old, entry in collected:
            new = self.migrate_vma_page(cpu, old)
            moved += self.migrate_vma_finalize_one(cpu, Vmf(mm, vma, vpn, False), entry, old, new)
        return moved

    def migrate_vma_finalize_one(self, cpu, vmf: Vmf, entry: int, old: int, new: int | None) -> bool:
        """migrate_vma_finalize() of one page: the entry becomes a PTE to the new page, or back
        to the old one if it did not move; then the old page is unlocked and released."""
        moved = False
        if self.remove_migration_pte(cpu, vmf, entry, old if new is None else new):
            moved = new is not None
            self.count("pages_migrated" if moved else "migrations_failed")
        if new is not None:
            self.pool.put_page(cpu, new, ANON_SITE)  # the allocation's: the PTE holds its own
        self.folio_unlock(cpu, old)
        self.pool.put_page(cpu, old, ANON_SITE)
        return moved

    def migrate_vma_collect_pmd(self, cpu, mm: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """migrate_vma_collect_pmd(): under the ptl, each exclusive page that nothing else holds
        (migrate_vma_check_page) is locked and referenced, and its PTE becomes a migration
        entry; then the range is flushed, before the ptl is dropped (60bae7370896,
        "mm/migrate_device.c: flush TLB while holding PTL": a zap could otherwise clear the
        entry and return before the flush).  (vpn, page, entry) of each."""
        table, ptl = self.pte_tryget_map_lock(cpu, mm, start)
        if not table:
            return []
        collected = []
        for v in range(start, end):
            off = self.table_off(table, v % self.geometry.pte)
            pte = self.page_mem.load64(off)
            ref = self.vm_normal_page(pte) if pte & PTE_PRESENT else 0
            if not ref or self.page_mem.load32(self._page_word(ref, "_mapcount")) != 0:
                continue
            if self.page_mem.load32(self._page_word(ref, "_refcount")) != 1 or not self.folio_trylock(cpu, ref):
                continue
            self.pool.refcount(ref & PFN_MASK).inc(cpu)
            upto = self.tlb_retire(mm, v)
            entry = swp_entry(SWP_MIGRATION_WRITE if pte & PTE_WRITE else SWP_MIGRATION_READ, ref)
            self.page_mem.store64(off, entry)
            self.page_remove_rmap(cpu, ref)
            self.pool.put_page(cpu, ref, ANON_SITE)
            collected.append((v, ref, entry))
        if collected:
            self.migrate_vma_flush(cpu, mm, start, end)
            self.tlb_promise(cpu, mm, start, end, upto)
        ptl.unlock(cpu)
        self.pte_put(cpu, mm, table, start)
        return collected

    def migrate_vma_flush(self, cpu, mm: int, start: int, end: int) -> None:
        """flush_tlb_range() "if we actually modified any entries": no CPU writes the old page
        through its TLB once the copy starts."""
        self.flush_tlb_mm_range(cpu, mm, start, end)

    def migrate_vma_page(self, cpu, old: int) -> int | None:
        """migrate_vma_pages() of one page: a new page with the old one's contents, or None if
        it cannot move (no memory, or someone else took a reference: folio_migrate_mapping's
        expected count, -EAGAIN)."""
        if self.page_mem.load32(self._page_word(old, "_refcount")) != 1:
            return None
        new = self.pool.alloc_page(cpu, GFP_NOWAIT, ANON_SITE)
        if new is None:
            return None
        for i in (0, 1):
            self.page_mem.store64(self.pool.data_off(new & PFN_MASK, i), self.pool.read(cpu, old, i, "migrate: copy"))
        self.page_mem.store64(self.page0 + (new & PFN_MASK) * PAGE_STRIDE + LAST_WRITER, 0)
        return new
