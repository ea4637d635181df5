"""mm/memory.c copy_page_range: fork shares every anonymous page write-protected, and swap slots.

The model's WARN_ON here: fork copies an anon page into a VMA without
anon_vma (VM_BUG_ON_VMA(!anon_vma) in the rmap code).
"""

from __future__ import annotations

from policies.mm.checks import FORK_NO_ANON_VMA
from policies.mm.pgtable import (
    PTE_PRESENT,
    PTE_WRITE,
    SWP_MIGRATION_READ,
    SWP_MIGRATION_WRITE,
    is_migration_entry,
    swp_entry,
    swp_offset,
    swp_type,
)
from policies.mm.swap import Swap
from shm.pool import PFN_MASK


class Fork(Swap):
    """anon_vma_fork, copy_page_range and copy_pte_range."""

    def anon_vma_fork(self, cpu, dst_vma: int, src_vma: int) -> None:
        """anon_vma_fork(): the child's VMA joins the parent's anon_vma, so rmap reaches the
        pages the two share."""
        self.mm_mem.store32(
            self.vma_off(dst_vma, "anon_vma"), self.vma_field(cpu, src_vma, "anon_vma", "anon_vma_fork")
        )

    def copy_nonpresent_pte(self, cpu, dst_mm: int, soff: int, pte: int) -> int:
        """copy_nonpresent_pte(): the entry the child gets.  A swap entry: the child names the
        slot too (swap_duplicate).  A migration entry (none in a correct model: it migrates under
        mmap_lock for read, which dup_mmap holds for write): a writable one becomes readable in
        both, for copy-on-write, and counts in the child's RSS."""
        if is_migration_entry(pte):
            if swp_type(pte) == SWP_MIGRATION_WRITE:
                pte = swp_entry(SWP_MIGRATION_READ, swp_offset(pte))
                self.page_mem.store64(soff, pte)
            self.add_rss(dst_mm, 1)
            return pte
        self.swap_duplicate(cpu, swp_offset(pte))
        self.mm_mem.fetch_add64(self.mm_off(dst_mm, "swapents"), 1)
        return pte

    def copy_page_range(self, cpu, dst_mm: int, src_mm: int, dst_vma: int, start: int, end: int) -> bool:
        """copy_page_range(): share every present page with the child, write-protected in both."""
        g = self.geometry
        vpn = start
        dst_anon = self.mm_mem.load32(self.vma_off(dst_vma, "anon_vma"))
        while vpn < end:
            stop = min(end, (vpn // g.pte + 1) * g.pte)
            if self.walk_pte_table(cpu, src_mm, vpn, "copy_pte_range"):
                dst = self.pte_alloc(cpu, dst_mm, vpn)  # pte_alloc_map_lock first, as copy_pte_range does
                if not dst:
                    return False
                src, sptl = self.pte_offset_map_lock(cpu, src_mm, vpn)
            else:
                src = 0
            if src:
                dptl = self.pool.ptl(dst & PFN_MASK)
                dptl.lock(cpu)
                rss = 0
                for v in range(vpn, stop):
                    soff = self.table_off(src, v % g.pte)
                    pte = self.page_mem.load64(soff)
                    if not pte:
                        continue
                    if not pte & PTE_PRESENT:
                        pte = self.copy_nonpresent_pte(cpu, dst_mm, soff, pte)
                        self.page_mem.store64(self.table_off(dst, v % g.pte), pte)
                        continue
                    ref = self.vm_normal_page(pte)
                    if ref:
                        if not dst_anon:
                            cpu.report(
                                FORK_NO_ANON_VMA,
                                f"copy_present_pte: anon page {ref & PFN_MASK} (anon_vma "
                                f"{self.page_mem.load64(self._page_word(ref, 'private'))}) copied into a child "
                                f"VMA without anon_vma at vpn {v}: the parent's VMA changed under dup_mmap, "
                                "so rmap cannot reach the child's mapping and the child sees a page the "
                                "parent is changing",
                                mm=dst_mm,
                                vpn=v,
                            )
                        self.page_dup_rmap(cpu, ref)
                        rss += 1
                        if pte & PTE_WRITE:
                            pte &= ~PTE_WRITE
                            self.page_mem.store64(soff, pte)
                    self.page_mem.store64(self.table_off(dst, v % g.pte), pte)
                self.add_mm_rss_vec(dst_mm, rss)
                dptl.unlock(cpu)
                sptl.unlock(cpu)
            vpn = stop
            cpu.window("copy_pte_range:next-table")
        return True
