"""mm/gup.c: get_user_pages_fast's lockless walk, follow_page, and unpinning."""

from __future__ import annotations

from policies.mm.checks import PIN_FOREIGN_WRITE
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT, PTE_SPECIAL, PTE_WRITE
from policies.mm.rmap import ANON_SITE, LAST_WRITER, Rmap
from policies.mm.vmf import Vmf
from shm.pool import PAGE_STRIDE, PFN_MASK


class Gup(Rmap):
    """Fast and slow GUP, and what a caller does with the page it pinned."""

    def gup_fast(self, cpu, mm: int, vpn: int, write: bool) -> int:
        """get_user_pages_fast(): a lockless walk with interrupts off; a page reference or 0.

        The table cannot be freed under it: free_pgtables waits for an IPI this
        CPU does not take until interrupts are back on, or for an RCU grace
        period, which interrupts off hold off.  After taking the reference it
        checks that neither the pmd nor the PTE changed (gup_fast_pte_range;
        70cbc3cc78a99, "mm: gup: fix the fast GUP race against THP collapse")."""
        g = self.geometry
        got = 0
        cpu.local_irq_disable()
        try:
            pmd, mi = self.walk_pmd(cpu, mm, vpn, "gup_fast: walk")
            if not pmd:
                return 0
            e = self.read_entry(cpu, pmd, mi, "gup_fast: pmd")
            if not e & PTE_PRESENT:
                return 0
            cpu.window("gup_fast:between-pmd-and-pte")
            table = e >> FLAG_BITS
            pte = self.read_entry(cpu, table, vpn % g.pte, "gup_fast: pte")
            pmd_off = self.table_off(pmd, mi)
            if self.page_mem.load64(pmd_off) != e:
                self.count("gup_fast_unhooked")  # the walk is in a table free_pgtables unhooked
            if not pte & PTE_PRESENT or pte & PTE_SPECIAL or write and not pte & PTE_WRITE:
                return 0
            ref = pte >> FLAG_BITS
            if not self.pool.refcount(ref & PFN_MASK).inc_not_zero(cpu):
                return 0
            if self.page_mem.load64(pmd_off) != e:
                self.count("gup_fast_pmd_changed")
                self.pool.put_page(cpu, ref, ANON_SITE)
                return 0
            if self.read_entry(cpu, table, vpn % g.pte, "gup_fast: recheck") != pte:
                self.pool.put_page(cpu, ref, ANON_SITE)
                return 0
            got = ref
        finally:
            cpu.local_irq_enable()
        return got

    def follow_page(self, cpu, vmf: Vmf) -> int:
        """follow_page_pte(): under the ptl, take a reference to the mapped page; 0 if none."""
        table, ptl = self.pte_offset_map_lock(cpu, vmf.mm, vmf.vpn, vmf.pmd)
        if not table:
            return 0
        pte = self.page_mem.load64(self.table_off(table, vmf.vpn % self.geometry.pte))
        ref = 0
        if pte & PTE_PRESENT and not pte & PTE_SPECIAL and (not vmf.write or pte & PTE_WRITE):
            ref = pte >> FLAG_BITS
            self.pool.refcount(ref & PFN_MASK).inc(cpu)
        ptl.unlock(cpu)
        return ref

    def use_pinned_page(self, cpu, mm: int, ref: int, what: str) -> None:
        """What a GUP caller does with the page it pinned from `mm` (a copy, DMA): the reference
        keeps it alive, and what the pin reads is that mm's memory: a write by another mm while
        it reads is copy-on-write gone wrong."""
        writes = self.pool.read(cpu, ref, 1, what)
        self.pool.read(cpu, ref, 0, what)
        cpu.window("gup:using-the-page")
        self.pool.read(cpu, ref, 0, what)
        if self.pool.read(cpu, ref, 1, what) != writes:
            writer = self.page_mem.load64(self.page0 + (ref & PFN_MASK) * PAGE_STRIDE + LAST_WRITER)
            if writer != self.mm_id(mm):
                cpu.report(
                    PIN_FOREIGN_WRITE,
                    f"{what}: page {ref & PFN_MASK}, pinned from mm {mm}, was written by "
                    f"mm id {writer} meanwhile: copy-on-write reused a page the pin still reads",
                    mm=mm,
                    writer=writer,
                    **self.pool.describe(ref & PFN_MASK),
                )
        self.unpin_user_page(cpu, ref)

    def unpin_user_page(self, cpu, ref: int) -> None:
        """unpin_user_page(): drop the reference GUP took."""
        self.count("gup_unpins")
        self.pool.put_page(cpu, ref, ANON_SITE)
