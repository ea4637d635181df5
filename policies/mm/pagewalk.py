"""mm/pagewalk.c: walk_page_range(), a walker that visits each PTE table of a range under
mmap_lock for read and maps it with its ptl (the pte_ref seed's section 3, thread A:
/proc/pid/smaps, mincore, MADV_COLD's pagewalk).

It is where a table freed while mmap_lock is held only for read hurts: the
walker's read of the pmd and its spin_lock on the ptl come after the check
that a table is there.  Since 6.5 pte_offset_map_lock() reads the pmd under
RCU and checks it again under the ptl, so a table that pt_reclaim frees
(by RCU) cannot go before the walker has locked it and seen it unhooked;
with the pte_ref seed, the walker holds a reference instead (pte_tryget_map_lock).
"""

from __future__ import annotations

from policies.mm.tlb import Tlb


class PageWalk(Tlb):
    """walk_page_range() over the PTE tables of a range."""

    def walk_page_range(self, cpu, mm: int, start: int, end: int) -> int:
        """walk_page_range() under mmap_lock for read: in each VMA's part of [start, end), each
        table's entries read under its ptl (walk_pte_range); how many are not none.  Only VMAs:
        a range munmap detached is torn down under mmap_lock for read too (downgraded), and its
        tables are freed without waiting for a walker that holds only a ptl."""
        lock = self.mmap_lock(mm)
        lock.down_read(cpu)
        try:
            return sum(self.walk_pte_range(cpu, mm, s, e) for s, e, _ in self.index_parts(mm, start, end, True))
        finally:
            lock.up_read(cpu)

    def walk_pte_range(self, cpu, mm: int, start: int, end: int) -> int:
        """walk_pte_range(): one table's [start, end) under its ptl, holding a reference on it
        (pte_tryget_map_lock); the entries that are not none.  The walker's put may be the
        table's last (the seed's fixed walker: "A ... pte_put() --> pte_refcount=0, free")."""
        table, ptl = self.pte_tryget_map_lock(cpu, mm, start)
        if not table:
            return 0
        found = self.walk_locked_table(cpu, table, start, end)
        ptl.unlock(cpu)
        if self.pte_put(cpu, mm, table, start):
            self.count("walker_freed_table")
        return found

    def walk_locked_table(self, cpu, table: int, start: int, end: int) -> int:
        """The walk itself, under the table's ptl: how many entries are not none."""
        cpu.window("walk_pte_range:locked")
        found = 0
        for v in range(start, end):
            if self.read_entry(cpu, table, v % self.geometry.pte, "walk_pte_range"):
                found += 1
        self.count("ptes_walked", end - start)
        return found
