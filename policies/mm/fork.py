"""mm/memory.c copy_page_range: fork shares every anonymous page write-protected, and swap slots;
a page the parent may have pinned is copied for the child instead.

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
    mk_pte,
    swp_entry,
    swp_offset,
    swp_type,
)
from policies.mm.rmap import ANON_SITE, LAST_WRITER
from policies.mm.swap import Swap
from shm import GFP_KERNEL
from shm.pool import PAGE_STRIDE, PFN_MASK


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

    def folio_needs_cow_for_dma(self, ref: int) -> bool:
        """folio_needs_cow_for_dma(): the page may be pinned, so the child must get a copy."""
        return self.folio_maybe_dma_pinned(ref)

    def folio_try_dup_anon_rmap(self, cpu, ref: int) -> bool:
        """__folio_try_dup_anon_rmap(): share the page with the child; False when it must be copied
        instead, an exclusive page that may be pinned (70e806e4e645, "mm: Do early cow for pinned
        pages during fork() for ptes": the pinned page stays the parent's).

        It runs under the ptl and src_mm's write_protect_seq: a fast GUP pin
        that lands after the check sees the sequence move and backs off."""
        if self.page_anon_exclusive(ref):
            if self.folio_needs_cow_for_dma(ref):
                return False
            self.clear_page_anon_exclusive(ref)
        self.page_dup_rmap(cpu, ref)
        return True

    def copy_present_page(self, cpu, doff: int, pte: int, ref: int, new: int, dst_anon: int, vpn: int) -> None:
        """copy_present_page(): the child's own copy of a page the parent may have pinned; the
        parent's PTE stays as it was."""
        for i in (0, 1):
            self.page_mem.store64(self.pool.data_off(new & PFN_MASK, i), self.pool.read(cpu, ref, i, "fork: copy"))
        self.page_mem.store64(self.page0 + (new & PFN_MASK) * PAGE_STRIDE + LAST_WRITER, 0)
        self.page_add_anon_rmap(new, dst_anon, vpn, exclusive=True)
        self.page_mem.store64(doff, mk_pte(new, PTE_PRESENT | (pte & PTE_WRITE)))
        self.count("fork_pinned_copies")

    def copy_page_range(self, cpu, dst_mm: int, src_mm: int, dst_vma: int, start: int, end: int) -> bool:
        """copy_page_range(): share every present page with the child, write-protected in both,
        inside src_mm's write_protect_seq; a page that must be copied gets a page allocated with
        the ptls dropped (page_copy_prealloc), and the table is taken again from there."""
        g = self.geometry
        vpn = start
        dst_anon = self.mm_mem.load32(self.vma_off(dst_vma, "anon_vma"))
        seq = self.write_protect_seq(src_mm)
        seq.write_begin(cpu)
        prealloc: int | None = None
        try:
            while vpn < end:
                stop = min(end, (vpn // g.pte + 1) * g.pte)
                src = 0
                if self.walk_pte_table(cpu, src_mm, vpn, "copy_pte_range"):
                    dst = self.pte_alloc_get(cpu, dst_mm, vpn)[2]  # pte_alloc_map_lock first, as copy_pte_range does
                    if not dst:
                        return False
                    # no reference on the source table: dup_mmap holds its mmap_lock for write
                    src, sptl = self.pte_offset_map_lock(cpu, src_mm, vpn)
                    if not src:
                        self.pte_put(cpu, dst_mm, dst, vpn)
                if src:
                    dptl = self.pte_lockptr(cpu, dst)
                    dptl.lock(cpu)
                    at, prealloc = self.copy_pte_range(cpu, dst_mm, dst, src, dst_anon, vpn, stop, prealloc)
                    dptl.unlock(cpu)
                    sptl.unlock(cpu)
                    self.pte_put(cpu, dst_mm, dst, vpn)
                    if at < stop:
                        prealloc = self.pool.alloc_page(cpu, GFP_KERNEL, ANON_SITE)
                        if prealloc is None:
                            return False
                        vpn = at
                        continue
                vpn = stop
                cpu.window("copy_pte_range:next-table")
            return True
        finally:
            if prealloc is not None:
                self.pool.put_page(cpu, prealloc, ANON_SITE)
            seq.write_end(cpu)

    def copy_pte_range(
        self, cpu, dst_mm: int, dst: int, src: int, dst_anon: int, start: int, stop: int, prealloc: int | None
    ) -> tuple[int, int | None]:
        """copy_pte_range() under both ptls: where it stopped (`stop`, or a vpn whose page must be
        copied and no page is at hand), and the preallocated page it did not use."""
        g = self.geometry
        rss = copied = 0
        try:
            for v in range(start, stop):
                soff = self.table_off(src, v % g.pte)
                doff = self.table_off(dst, v % g.pte)
                pte = self.page_mem.load64(soff)
                if not pte:
                    continue
                copied += 1
                if not pte & PTE_PRESENT:
                    self.page_mem.store64(doff, self.copy_nonpresent_pte(cpu, dst_mm, soff, pte))
                    continue
                ref = self.vm_normal_page(pte)
                if ref:
                    if not dst_anon:
                        self.report_no_anon_vma(cpu, dst_mm, ref, v)
                    if not self.folio_try_dup_anon_rmap(cpu, ref):
                        if prealloc is None:
                            copied -= 1
                            return v, None
                        self.copy_present_page(cpu, doff, pte, ref, prealloc, dst_anon, v)
                        prealloc = None
                        rss += 1
                        continue
                    rss += 1
                    if pte & PTE_WRITE:
                        pte &= ~PTE_WRITE
                        self.page_mem.store64(soff, pte)
                self.page_mem.store64(doff, pte)
            return stop, prealloc
        finally:
            self.add_mm_rss_vec(dst_mm, rss)
            self.pte_get_many(cpu, dst, copied)

    def report_no_anon_vma(self, cpu, dst_mm: int, ref: int, vpn: int) -> None:
        cpu.report(
            FORK_NO_ANON_VMA,
            f"copy_present_pte: anon page {ref & PFN_MASK} (anon_vma "
            f"{self.page_mem.load64(self._page_word(ref, 'private'))}) copied into a child "
            f"VMA without anon_vma at vpn {vpn}: the parent's VMA changed under dup_mmap, "
            "so rmap cannot reach the child's mapping and the child sees a page the "
            "parent is changing",
            mm=dst_mm,
            vpn=vpn,
        )
