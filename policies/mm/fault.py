"""mm/memory.c, the fault side: handle_mm_fault, do_anonymous_page, do_swap_page, do_wp_page,
->map_pages.

How a fault reaches and locks its PTE, and what it checks before
set_pte_at, is vmf.py.  The model's WARN_ON here, in wp_page_copy after its
flush: a write that landed in the old page after it was copied (a lost
write).
"""

from __future__ import annotations

from policies.mm.migrate import Migrate
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT, PTE_SPECIAL, PTE_WRITE, is_migration_entry, mk_pte, swp_offset
from policies.mm.rmap import ANON_SITE, LAST_WRITER
from policies.mm.vmf import (
    FAULT_FLAG_PTE_GET,
    FAULT_FLAG_SPECULATIVE,
    FAULT_FLAG_UNSHARE,
    VM_FAULT_OK,
    VM_FAULT_OOM,
    VM_FAULT_RETRY,
    Vmf,
)
from shm import GFP_KERNEL, GFP_NOWAIT
from shm.pool import PAGE_STRIDE, PFN_MASK


class Fault(Migrate):
    """The fault handler: anonymous pages, the zero page, copy-on-write, ->map_pages."""

    def wp_can_reuse_anon_folio(self, ref: int) -> bool:
        """do_wp_page may write in place only to a page nothing else holds: its one mapping is
        the only reference.  By page count, not mapcount, since 09854ba94c6a ("mm: do_wp_page()
        simplification", CVE-2020-29374): a page GUP pinned and another mm unmapped has one
        mapping, but the pin still reads it."""
        return self.page_mem.load32(self._page_word(ref, "_refcount")) == 1

    def wp_can_reuse(self, ref: int) -> bool:
        """do_wp_page's test: PageAnonExclusive, or wp_can_reuse_anon_folio()."""
        if self.page_anon_exclusive(ref):
            if self.folio_maybe_dma_pinned(ref):
                self.count("pinned_reuses")
            return True
        return self.wp_can_reuse_anon_folio(ref)

    def handle_mm_fault(self, cpu, vmf: Vmf) -> int:
        """handle_mm_fault() for a private anonymous VMA: anonymous, zero page, or COW."""
        if vmf.flags & FAULT_FLAG_SPECULATIVE:
            pte = self.spf_walk(cpu, vmf)
            if pte < 0:
                return VM_FAULT_RETRY
            return self.handle_pte_fault(cpu, vmf, pte)
        pmd, pi, table = self.pte_alloc_get(cpu, vmf.mm, vmf.vpn)
        if not table:
            return VM_FAULT_OOM
        vmf.flags |= FAULT_FLAG_PTE_GET
        vmf.table = table
        try:
            vmf.pmd = (pmd, pi)
            got = self.pte_offset_map(cpu, vmf.pmd, vmf.vpn)
            if got is None:
                return VM_FAULT_OK  # the table went (reclaimed): the access faults again
            return self.handle_pte_fault(cpu, vmf, got)
        finally:
            self.pte_put_vmf(cpu, vmf)

    def handle_pte_fault(self, cpu, vmf: Vmf, pte: int) -> int:
        """handle_pte_fault(): what the PTE read without the ptl asks for."""
        if not pte:
            return self.do_anonymous_page(cpu, vmf)
        if not pte & PTE_PRESENT:
            if vmf.flags & FAULT_FLAG_SPECULATIVE:
                return VM_FAULT_RETRY  # the model's SPF leaves swap and migration to mmap_lock
            return self.do_swap_page(cpu, vmf, pte)
        if (vmf.write or vmf.flags & FAULT_FLAG_UNSHARE) and not pte & PTE_WRITE:
            return self.do_wp_page(cpu, vmf)
        return VM_FAULT_OK

    def do_anonymous_page(self, cpu, vmf: Vmf, page: int | None = None) -> int:
        """do_anonymous_page(): the zero page for a read, a new page for a write."""
        anon = 0
        if vmf.write and page is None:
            page, anon = self._new_anon_page(cpu, vmf)
            if page is None:
                return VM_FAULT_OOM
        elif page is not None:
            anon = self.mm_mem.load32(self.vma_off(vmf.vma, "anon_vma"))
        cpu.window("do_anonymous_page:before-ptl")
        table, ptl = self.pte_map_lock(cpu, vmf)
        if not table:
            self._drop_new(cpu, page)
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if self.page_mem.load64(off):
            return self._back_out(cpu, ptl, page, VM_FAULT_OK)
        if not self._may_install(cpu, vmf):
            return self._back_out(cpu, ptl, page, VM_FAULT_RETRY)
        if page is None:
            self.page_mem.store64(off, mk_pte(self.zero_page, PTE_PRESENT | PTE_SPECIAL))
        else:
            self.page_add_anon_rmap(page, anon, vmf.vpn, exclusive=True)
            self.mm_mem.fetch_add64(self.mm0 + vmf.mm * self.mm_stride + self.rss_field, 1)
            self.page_mem.store64(off, page << FLAG_BITS | PTE_PRESENT | PTE_WRITE)
        self.pte_get(cpu, table)
        ptl.unlock(cpu)
        return VM_FAULT_OK

    def do_swap_page(self, cpu, vmf: Vmf, orig: int) -> int:
        """do_swap_page(): a migration entry waits for the migration; a swap entry is read into
        a new page, which replaces it if the PTE is still the same under the ptl.

        The slot is read under the ptl: while the PTE names it, its count
        holds it (the kernel reads it earlier, into the swap cache).  The page
        is mapped writable for a write fault when no other entry names the
        slot (it is exclusive: RMAP_EXCLUSIVE)."""
        if is_migration_entry(orig):
            self.migration_entry_wait(cpu, vmf, orig)
            return VM_FAULT_OK
        slot = swp_offset(orig)
        anon = self.mm_mem.load32(self.vma_off(vmf.vma, "anon_vma"))
        page = self.pool.alloc_page(cpu, GFP_KERNEL, ANON_SITE)
        if page is None:
            return VM_FAULT_OOM
        cpu.window("do_swap_page:before-ptl")
        table, ptl = self.pte_map_lock(cpu, vmf)
        if not table:
            self._drop_new(cpu, page)
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if not self.swapin_pte_same(off, orig):
            self.count("swapin_raced")
            return self._back_out(cpu, ptl, page, VM_FAULT_OK)
        if not self._may_install(cpu, vmf):
            return self._back_out(cpu, ptl, page, VM_FAULT_RETRY)
        if not self.swap_read_folio(cpu, slot, page):
            return self._back_out(cpu, ptl, page, VM_FAULT_OK)
        self.page_mem.store64(self.page0 + (page & PFN_MASK) * PAGE_STRIDE + LAST_WRITER, 0)
        exclusive = self.swap_count(slot) == 1
        writable = vmf.write and exclusive
        self.page_add_anon_rmap(page, anon, vmf.vpn, exclusive=exclusive)
        self.add_rss(vmf.mm, 1)
        self.mm_mem.fetch_sub64(self.mm_off(vmf.mm, "swapents"), 1)
        self.page_mem.store64(off, mk_pte(page, PTE_PRESENT | (PTE_WRITE if writable else 0)))
        self.swap_free(cpu, slot)
        ptl.unlock(cpu)
        self.count("swapins")
        return VM_FAULT_OK

    def swapin_pte_same(self, off: int, orig: int) -> bool:
        """do_swap_page's pte_same(): nobody swapped the entry in (or zapped it) meanwhile."""
        return self.page_mem.load64(off) == orig

    def do_wp_page(self, cpu, vmf: Vmf) -> int:
        """do_wp_page(): reuse an exclusive anon page, else copy it (wp_page_copy).

        PageAnonExclusive is reused whatever its count: a FOLL_PIN pin adds
        GUP_PIN_COUNTING_BIAS, and copying a pinned page away from the mm
        that pinned it leaves the pin on a page the process no longer sees.
        An unshare fault (FAULT_FLAG_UNSHARE) makes the page exclusive and
        leaves the PTE read-only."""
        table, ptl = self.pte_map_lock(cpu, vmf)
        if not table:
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        pte = self.page_mem.load64(off)
        if not pte & PTE_PRESENT or pte & PTE_WRITE:
            ptl.unlock(cpu)
            return VM_FAULT_OK
        old = pte >> FLAG_BITS
        special = bool(pte & PTE_SPECIAL)
        if not special and self.wp_can_reuse(old):
            if not self._may_install(cpu, vmf):
                ptl.unlock(cpu)
                return VM_FAULT_RETRY
            self.set_page_anon_exclusive(old)
            if vmf.write:
                self.page_mem.store64(off, pte | PTE_WRITE)
            ptl.unlock(cpu)
            return VM_FAULT_OK
        if not special:
            self.pool.refcount(old & PFN_MASK).inc(cpu)
            self.count("cow_copies")
        ptl.unlock(cpu)
        ret = self.wp_page_copy(cpu, vmf, old, pte, special)
        if not special:
            self.pool.put_page(cpu, old, ANON_SITE)
        return ret

    def wp_page_copy(self, cpu, vmf: Vmf, old: int, orig: int, special: bool) -> int:
        """wp_page_copy(): copy the page, then clear and flush the PTE and install the copy.

        The copy is taken before the flush: a write through a writable TLB entry
        that lands in between is lost to this mm (the race fork's
        vma_start_write closes, fb49c455323f).  The page's write count against
        what the copy carried shows it."""
        page, anon = self._new_anon_page(cpu, vmf)
        if page is None:
            return VM_FAULT_OOM
        writes = 0
        if not special:
            writes = self.pool.read(cpu, old, 1, "wp_page_copy: copying the old page")
            self.page_mem.store64(self.pool.data_off(page & PFN_MASK, 1), writes)
        cpu.window("wp_page_copy:before-ptl")
        table, ptl = self.pte_map_lock(cpu, vmf)
        if not table:
            self._drop_new(cpu, page)
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if self.page_mem.load64(off) != orig or not self._may_install(cpu, vmf):
            return self._back_out(cpu, ptl, page, VM_FAULT_OK)
        epoch = self.tlb_retire(vmf.mm, vmf.vpn)
        self.page_mem.store64(off, 0)
        self.flush_tlb_mm_range(cpu, vmf.mm, vmf.vpn, vmf.vpn + 1)
        self.tlb_promise(cpu, vmf.mm, vmf.vpn, vmf.vpn + 1, epoch)
        if not special:
            self.check_lost_write(cpu, old, page, vmf, "wp_page_copy")
        self.page_add_anon_rmap(page, anon, vmf.vpn, exclusive=True)
        self.page_mem.store64(off, mk_pte(page, PTE_PRESENT | (PTE_WRITE if vmf.write else 0)))
        if special:
            self.add_rss(vmf.mm, 1)
        else:
            self.page_remove_rmap(cpu, old)
        ptl.unlock(cpu)
        if not special:
            self.pool.put_page(cpu, old, ANON_SITE)
        return VM_FAULT_OK

    def map_pages_nowait(self, cpu, vmf: Vmf) -> int:
        """The ->map_pages() path under RCU with no VMA reference: it must not sleep.

        Wilcox (2019-12-03): "If it needs to sleep, it should bump the refcount,
        drop the RCU lock, prepare enough so that the next call will not need
        to sleep ... and return VM_FAULT_RETRY".  A missing page table or a
        failed GFP_NOWAIT allocation is that case: VM_FAULT_RETRY."""
        table = self.walk_pte_table(cpu, vmf.mm, vmf.vpn, "map_pages: walk")
        if not table:
            return VM_FAULT_RETRY
        pte = self.read_entry(cpu, table, vmf.vpn % self.geometry.pte, "map_pages: walk")
        if pte & PTE_PRESENT and (not vmf.write or pte & PTE_WRITE):
            return VM_FAULT_OK
        if pte and not pte & PTE_PRESENT:
            return VM_FAULT_RETRY
        if pte & PTE_PRESENT or not vmf.write:
            if pte & PTE_PRESENT:
                return VM_FAULT_RETRY
            return self.do_anonymous_page(cpu, vmf)
        page, _ = self._new_anon_page(cpu, vmf, GFP_NOWAIT)
        if page is None:
            return VM_FAULT_RETRY
        return self.do_anonymous_page(cpu, vmf, page)
