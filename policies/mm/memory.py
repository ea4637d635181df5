"""mm/memory.c: faults, zapping, freeing page tables, fork's copy, GUP, and the CPU's loads.

Every function takes the VMA as the caller found and pinned it (a `Vmf`): how
it was found (mmap_lock, RCU and a refcount, SRCU, a seqcount, a per-VMA
lock) is the mechanism under test, and lives in the mechanism's module.  A
mechanism that must revalidate before installing a PTE (the speculative
fault) gives the Vmf a `validate` callback that runs under the ptl.

Online checks here are the model's WARN_ONs:
  * a fault installs a PTE for a VMA that munmap has already zapped, every
    table of it (the PTE would outlive its VMA: Vlastimil, 2019-12-10, "a parallel fault
    that started with the old VMA ... doesn't end up being the last to
    install the PTE for the VMA that's going away");
  * a fault installs a PTE outside its VMA, or for a VMA of another mm;
  * fork copies an anon page into a VMA without anon_vma
    (VM_BUG_ON_VMA(!anon_vma) in the rmap code);
  * a CPU loads through a translation to a page that is freed or that the
    page table no longer maps while it maps another (stale-tlb), or writes a
    page another mm still shares (a broken COW).
"""

from __future__ import annotations

from policies.mm.checks import (
    ACCESS_FREED_PAGE,
    COW_WRITE_SHARED,
    FORK_NO_ANON_VMA,
    FREE_MAPPED_TABLE,
    PTE_AFTER_ZAP,
    PTE_OUTSIDE_VMA,
    RMAP_UNDERFLOW,
    STALE_TLB,
)
from policies.mm.pgtable import (
    FLAG_BITS,
    PMD_SITE,
    PTE_PRESENT,
    PTE_SITE,
    PTE_SPECIAL,
    PTE_WRITE,
    describe_entry,
    mk_pte,
)
from policies.mm.tlb import TLB_SIZE, Tlb
from policies.mm.vma import VM_ZAPPED, VMA
from shm import GFP_KERNEL, GFP_NOWAIT, alloc_site
from shm.layout import field_offsets
from shm.pool import PAGE_ALLOCATED, PAGE_FIELDS, PFN_BITS, PFN_MASK
from shm.slab import SLOT_MASK

ANON_SITE = alloc_site("mm: anonymous page")
ZERO_SITE = alloc_site("mm: the zero page")
ZERO_STAMP = 0x5A45524F
_PRIVATE = PAGE_FIELDS["private"]
_MAPCOUNT = PAGE_FIELDS["_mapcount"]
_VMA_FIELDS = field_offsets(VMA)
_VM_START = _VMA_FIELDS["vm_start"]
_VM_END, _VM_FLAGS, _VM_MM, _ZAP_START, _ZAP_END = (_VMA_FIELDS[f] - _VM_START for f in (
    "vm_end", "vm_flags", "vm_mm", "zap_start", "zap_end"))

VM_FAULT_OK = 0
VM_FAULT_RETRY = 1
VM_FAULT_SIGSEGV = 2
VM_FAULT_OOM = 3
FAULT_RESULTS = ("ok", "retry", "sigsegv", "oom")


class Vmf:
    """struct vm_fault: the VMA as the mechanism pinned it, and what to check before installing."""

    __slots__ = ("mm", "vma", "vpn", "write", "validate", "how", "token", "pmd")

    def __init__(self, mm: int, vma: int, vpn: int, write: bool, how: str = "", token=None, validate=None):
        self.mm, self.vma, self.vpn, self.write = mm, vma, vpn, write
        self.how, self.token, self.validate = how, token, validate
        self.pmd: tuple[int, int] | None = None


def stamp(anon: int, vpn: int) -> int:
    return anon << 16 | vpn


class Memory(Tlb):
    """The fault handler, zap, free_pgtables, copy_page_range, GUP and loads: the fifth layer."""

    # -- struct page bookkeeping ---------------------------------------------------
    def _page_word(self, ref: int, field: str) -> int:
        return self.pool.field_off(ref & PFN_MASK, field)

    def page_add_anon_rmap(self, ref: int, anon: int, vpn: int) -> None:
        pmem, f = self.pmem, self.page0 + (ref & PFN_MASK) * 128
        pmem.store32(f + _MAPCOUNT, 0)
        pmem.store64(f + _PRIVATE, anon)
        pmem.store64(f + _PRIVATE + 8, vpn)

    def page_dup_rmap(self, cpu, ref: int) -> None:
        """A second mapping of the page (fork): one more mapcount and one more reference."""
        self.pmem.fetch_add32(self._page_word(ref, "_mapcount"), 1)
        self.pool.refcount(ref & PFN_MASK).inc(cpu)

    def page_remove_rmap(self, cpu, ref: int) -> None:
        if self.pmem.fetch_sub32(self._page_word(ref, "_mapcount"), 1) < 0:
            cpu.report(RMAP_UNDERFLOW, f"page_remove_rmap: page {ref & PFN_MASK} was not mapped",
                       **self.pool.describe(ref & PFN_MASK))

    def add_rss(self, mm: int, n: int) -> None:
        self.smem.fetch_add64(self.mm_off(mm, "rss"), n)

    def add_mm_rss_vec(self, mm: int, n: int) -> None:
        """add_mm_rss_vec(): what zap_pte_range and copy_pte_range counted, added at the end of a table."""
        if n:
            self.add_rss(mm, n)

    def vm_normal_page(self, pte: int) -> int:
        """vm_normal_page(): the page a present PTE maps, 0 for a special mapping (the zero page)."""
        return 0 if pte & PTE_SPECIAL else pte >> FLAG_BITS

    def wp_can_reuse_anon_folio(self, ref: int) -> bool:
        """do_wp_page may write in place only to a page no other mapping shares."""
        return self.pmem.load32(self._page_word(ref, "_mapcount")) == 0

    # -- anon_vma ----------------------------------------------------------------
    def anon_vma_prepare(self, cpu, vmf: Vmf) -> int:
        """anon_vma_prepare(): the VMA's anon_vma, allocated under page_table_lock on first use."""
        off = self.vma_off(vmf.vma, "anon_vma")
        anon = self.smem.load32(off)
        if anon:
            return anon
        lock = self.page_table_lock(vmf.mm)
        lock.lock(cpu)
        anon = self.smem.load32(off)
        if not anon:
            anon = self.smem.fetch_add32(self.global_off("next_anon_vma"), 1) + 1
            self.smem.store32(off, anon)
        lock.unlock(cpu)
        return anon

    # -- installing a PTE -----------------------------------------------------------
    def _may_install(self, cpu, vmf: Vmf) -> bool:
        """Under the ptl, just before set_pte_at: the mechanism's check, then the model's."""
        if vmf.validate is not None and not vmf.validate(vmf):
            return False
        vma = vmf.vma
        c = self.vma_cache
        mem = self.smem
        base = c.base + (vma & SLOT_MASK) * c.stride + _VM_START
        flags = mem.load32(base + _VM_FLAGS)
        s, e = mem.load32(base), mem.load32(base + _VM_END)
        vm_mm = mem.load32(base + _VM_MM)
        if not c.check(cpu, vma, "set_pte_at: the fault's VMA"):
            return False
        if flags & VM_ZAPPED and mem.load32(base + _ZAP_START) <= vmf.vpn < mem.load32(base + _ZAP_END):
            cpu.report(PTE_AFTER_ZAP, f"fault installs a PTE at {vmf.vpn} for VMA {self._vma_text(vma)} after "
                       "munmap zapped it: the PTE outlives its VMA (a parallel fault that started with the "
                       "old VMA ended up the last to install the PTE)", mm=vmf.mm, vpn=vmf.vpn,
                       **self.vma_describe(vma))
            return False
        if not s <= vmf.vpn < e or vm_mm != self.mm_id(vmf.mm):
            cpu.report(PTE_OUTSIDE_VMA, f"fault installs a PTE at {vmf.vpn} of mm {vmf.mm} through VMA "
                       f"[{s}, {e}) of mm id {vm_mm}: the VMA it holds is not the one that covers the "
                       "address (was the slot reused?)", mm=vmf.mm, vpn=vmf.vpn, **self.vma_describe(vma))
            return False
        return True

    def _vma_text(self, vma: int) -> str:
        d = self.vma_describe(vma)
        return f"{d['vma']} ({d.get('vm_flags', '')})"

    # -- the fault handler ----------------------------------------------------------
    def handle_mm_fault(self, cpu, vmf: Vmf) -> int:
        """handle_mm_fault() for a private anonymous VMA: anonymous, zero page, or COW."""
        pmd, pi, table = self.pmd_pte_alloc(cpu, vmf.mm, vmf.vpn)
        if not table:
            return VM_FAULT_OOM
        vmf.pmd = (pmd, pi)
        pte = self.read_entry(cpu, table, vmf.vpn % self.geometry.pte, "handle_pte_fault")
        if not pte & PTE_PRESENT:
            return self.do_anonymous_page(cpu, vmf)
        if vmf.write and not pte & PTE_WRITE:
            return self.do_wp_page(cpu, vmf)
        return VM_FAULT_OK

    def _new_anon_page(self, cpu, vmf: Vmf, gfp: int = GFP_KERNEL) -> tuple[int | None, int]:
        anon = self.anon_vma_prepare(cpu, vmf)
        page = self.pool.alloc_page(cpu, gfp, ANON_SITE)
        if page is not None:
            data = self.pool_data0 + (page & PFN_MASK) * self.page_size
            self.pmem.store64(data, stamp(anon, vmf.vpn))
            self.pmem.store64(data + 8, 0)
        return page, anon

    def do_anonymous_page(self, cpu, vmf: Vmf, page: int | None = None) -> int:
        """do_anonymous_page(): the zero page for a read, a new page for a write."""
        anon = 0
        if vmf.write and page is None:
            page, anon = self._new_anon_page(cpu, vmf)
            if page is None:
                return VM_FAULT_OOM
        elif page is not None:
            anon = self.smem.load32(self.vma_off(vmf.vma, "anon_vma"))
        cpu.window("do_anonymous_page:before-ptl")
        table, ptl = self.pte_offset_map_lock(cpu, vmf.mm, vmf.vpn, vmf.pmd)
        if not table:
            self._drop_new(cpu, page)
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if self.pmem.load64(off):
            ptl.unlock(cpu)
            self._drop_new(cpu, page)
            return VM_FAULT_OK
        if not self._may_install(cpu, vmf):
            ptl.unlock(cpu)
            self._drop_new(cpu, page)
            return VM_FAULT_RETRY
        if page is None:
            self.pmem.store64(off, mk_pte(self.zero_page, PTE_PRESENT | PTE_SPECIAL))
        else:
            self.page_add_anon_rmap(page, anon, vmf.vpn)
            self.smem.fetch_add64(self.mm0 + vmf.mm * self.mm_stride + self.rss_field, 1)
            self.pmem.store64(off, page << FLAG_BITS | PTE_PRESENT | PTE_WRITE)
        ptl.unlock(cpu)
        return VM_FAULT_OK

    def _drop_new(self, cpu, page: int | None) -> None:
        if page is not None:
            self.pool.free_page(cpu, page, ANON_SITE)

    def do_wp_page(self, cpu, vmf: Vmf) -> int:
        """do_wp_page(): reuse an exclusive anon page, else copy it (wp_page_copy)."""
        table, ptl = self.pte_offset_map_lock(cpu, vmf.mm, vmf.vpn, vmf.pmd)
        if not table:
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        pte = self.pmem.load64(off)
        if not pte & PTE_PRESENT or pte & PTE_WRITE:
            ptl.unlock(cpu)
            return VM_FAULT_OK
        old = pte >> FLAG_BITS
        special = bool(pte & PTE_SPECIAL)
        if not special and self.wp_can_reuse_anon_folio(old):
            if not self._may_install(cpu, vmf):
                ptl.unlock(cpu)
                return VM_FAULT_RETRY
            self.pmem.store64(off, pte | PTE_WRITE)
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
        page, anon = self._new_anon_page(cpu, vmf)
        if page is None:
            return VM_FAULT_OOM
        if not special:
            writes = self.pool.read(cpu, old, 1, "wp_page_copy: copying the old page")
            self.pmem.store64(self.pool.data_off(page & PFN_MASK, 1), writes)
        cpu.window("wp_page_copy:before-ptl")
        table, ptl = self.pte_offset_map_lock(cpu, vmf.mm, vmf.vpn, vmf.pmd)
        if not table:
            self._drop_new(cpu, page)
            return VM_FAULT_RETRY
        off = self.table_off(table, vmf.vpn % self.geometry.pte)
        if self.pmem.load64(off) != orig or not self._may_install(cpu, vmf):
            ptl.unlock(cpu)
            self._drop_new(cpu, page)
            return VM_FAULT_OK
        self.pmem.store64(off, 0)
        self.flush_tlb_mm_range(cpu, vmf.mm, vmf.vpn, vmf.vpn + 1)
        self.page_add_anon_rmap(page, anon, vmf.vpn)
        self.pmem.store64(off, mk_pte(page, PTE_PRESENT | PTE_WRITE))
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
        if pte & PTE_PRESENT or not vmf.write:
            if pte & PTE_PRESENT:
                return VM_FAULT_RETRY
            return self.do_anonymous_page(cpu, vmf)
        page, _ = self._new_anon_page(cpu, vmf, GFP_NOWAIT)
        if page is None:
            return VM_FAULT_RETRY
        return self.do_anonymous_page(cpu, vmf, page)

    # -- zap, free_pgtables ---------------------------------------------------------
    def zap_page_range(self, cpu, mm: int, start: int, end: int, gather: list[int],
                       flush_each: bool = False, vmas: tuple[int, ...] | list[int] = ()) -> None:
        """unmap_page_range() over [start, end): zap_pte_range() table by table.

        The pages are freed by tlb_finish_mmu() after the flush.  With
        flush_each the TLB is flushed before each ptl is dropped (the
        force_flush path), so no fault can install a new page behind a CPU
        that still has the old translation (what MADV_DONTNEED needs here).
        `vmas` are the VMAs going away: each table the zap has passed is
        marked on them before its ptl is released (vma_mark_zapped)."""
        g = self.geometry
        vpn = start
        while vpn < end:
            stop = min(end, (vpn // g.pte + 1) * g.pte)
            table, ptl = self.pte_offset_map_lock(cpu, mm, vpn)
            if table:
                if self.zap_pte_range(cpu, mm, table, vpn, stop, gather) and flush_each:
                    self.flush_tlb_mm_range(cpu, mm, vpn, stop)
            for v in vmas:
                self.vma_mark_zapped(v, start, stop)
            if table:
                ptl.unlock(cpu)
            vpn = stop
            if vpn < end:
                cpu.window("zap_pte_range:next-table")

    def zap_pte_range(self, cpu, mm: int, table: int, start: int, end: int, gather: list[int]) -> int:
        """zap_pte_range(): under the table's ptl, clear [start, end) and gather the pages; how many PTEs."""
        zapped = rss = 0
        for v in range(start, end):
            off = self.table_off(table, v % self.geometry.pte)
            pte = self.pmem.load64(off)
            if not pte & PTE_PRESENT:
                continue
            self.pmem.store64(off, 0)
            zapped += 1
            self.count("ptes_zapped")
            ref = self.vm_normal_page(pte)
            if not ref:
                self.count("zero_pages_zapped")
                continue
            self.page_remove_rmap(cpu, ref)
            rss -= 1
            gather.append(ref)
        self.add_mm_rss_vec(mm, rss)
        return zapped

    def tlb_finish_mmu(self, cpu, mm: int, start: int, end: int, gather: list[int],
                       flushed: bool = False) -> None:
        """Flush, then free what was gathered: a page is freed only when no TLB maps it."""
        if not flushed:
            self.flush_tlb_mm_range(cpu, mm, start, end)
        self.free_pages_and_swap_cache(cpu, gather)

    def free_pages_and_swap_cache(self, cpu, pages: list[int]) -> None:
        """The mmu_gather's batch released (tlb_batch_pages_flush): one put_page each."""
        for ref in pages:
            self.pool.put_page(cpu, ref, ANON_SITE)

    def free_pgtables(self, cpu, mm: int, start: int, end: int, floor: int, ceiling: int,
                      remove_tables=None) -> None:
        """free_pgtables() of the unmapped [start, end): free the tables whose whole span lies in
        [floor, ceiling), the gap between the neighbouring VMAs (free_pgd_range's limits: a
        table a neighbour still uses stays).

        Each is unhooked under page_table_lock; then `remove_tables` frees them,
        by default tlb_remove_table_sync_one: the flush IPI first, which waits
        for every CPU walking with interrupts off (fast GUP, the MMU)."""
        g = self.geometry
        lock = self.page_table_lock(mm)
        pgd = self.smem.load64(self.mm_off(mm, "pgd"))
        if not pgd or floor >= ceiling:
            return
        unhooked: list[tuple[int, int]] = []
        for gi in range(floor // g.pmd_span, (ceiling - 1) // g.pmd_span + 1):
            pe = self.read_entry(cpu, pgd, gi, "free_pgtables")
            if not pe & PTE_PRESENT:
                continue
            pmd = pe >> FLAG_BITS
            base = gi * g.pmd_span
            for mi in range(g.pmd):
                lo = base + mi * g.pte
                if lo < floor or lo + g.pte > ceiling:
                    if lo < end and lo + g.pte > start:
                        self.count("shared_tables_kept")
                    continue
                lock.lock(cpu)
                off = self.table_off(pmd, mi)
                e = self.pmem.load64(off)
                if e & PTE_PRESENT:
                    self.pmem.store64(off, 0)
                    unhooked.append((e >> FLAG_BITS, lo))
                lock.unlock(cpu)
            if base >= floor and base + g.pmd_span <= ceiling:
                lock.lock(cpu)
                if not any(self.pmem.load64(self.table_off(pmd, k)) for k in range(g.pmd)):
                    self.pmem.store64(self.table_off(pgd, gi), 0)
                    unhooked.append((pmd, -1))
                lock.unlock(cpu)
        if unhooked:
            cpu.window("free_pgtables:unhooked")
            (remove_tables or self.tlb_remove_table_sync_one)(cpu, mm, floor, ceiling, unhooked)

    def tlb_remove_table_sync_one(self, cpu, mm: int, floor: int, ceiling: int,
                                  tables: list[tuple[int, int]]) -> None:
        self.flush_tlb_mm_range(cpu, mm, floor, ceiling)
        self.pte_free(cpu, mm, tables)

    def pte_free(self, cpu, mm: int, tables: list[tuple[int, int]]) -> None:
        for table, lo in tables:
            for k in range(self.geometry.pte if lo >= 0 else self.geometry.pmd):
                e = self.pmem.load64(self.table_off(table, k))
                if e:
                    where = f"vpn {lo + k}" if lo >= 0 else f"pmd entry {k}"
                    cpu.report(FREE_MAPPED_TABLE, f"free_pgtables: freeing a table that still maps {where}: "
                               f"{describe_entry(e)}", mm=mm)
                    break
            self.mm_dec_nr_ptes(mm)
            self.count("tables_freed")
            self.pool.free_page(cpu, table, PTE_SITE if lo >= 0 else PMD_SITE)

    def mm_dec_nr_ptes(self, mm: int) -> None:
        """mm_dec_nr_ptes(): the mm holds one table less (pgtable_bytes, which check_mm verifies)."""
        self.smem.fetch_sub64(self.mm_off(mm, "pgtable_bytes"), self.page_size)

    # -- fork ------------------------------------------------------------------------
    def copy_page_range(self, cpu, dst_mm: int, src_mm: int, dst_vma: int, start: int, end: int) -> bool:
        """copy_page_range(): share every present page with the child, write-protected in both."""
        g = self.geometry
        vpn = start
        dst_anon = self.smem.load32(self.vma_off(dst_vma, "anon_vma"))
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
                    pte = self.pmem.load64(soff)
                    if not pte & PTE_PRESENT:
                        continue
                    ref = self.vm_normal_page(pte)
                    if ref:
                        if not dst_anon:
                            cpu.report(FORK_NO_ANON_VMA, f"copy_present_pte: anon page {ref & PFN_MASK} (anon_vma "
                                       f"{self.pmem.load64(self._page_word(ref, 'private'))}) copied into a child "
                                       f"VMA without anon_vma at vpn {v}: the parent's VMA changed under dup_mmap, "
                                       "so rmap cannot reach the child's mapping and the child sees a page the "
                                       "parent is changing", mm=dst_mm, vpn=v)
                        self.page_dup_rmap(cpu, ref)
                        rss += 1
                        if pte & PTE_WRITE:
                            pte &= ~PTE_WRITE
                            self.pmem.store64(soff, pte)
                    self.pmem.store64(self.table_off(dst, v % g.pte), pte)
                self.add_mm_rss_vec(dst_mm, rss)
                dptl.unlock(cpu)
                sptl.unlock(cpu)
            vpn = stop
            cpu.window("copy_pte_range:next-table")
        return True

    # -- the CPU's own loads and stores ---------------------------------------------------
    def access(self, cpu, mm: int, vpn: int, write: bool) -> bool:
        """One user load or store: through the TLB, else the MMU's walk.  False: it must fault.

        The whole translation and the access are one instruction (insn_begin): no
        flush IPI lands in the middle, and a broadcast TLBI waits for it."""
        mmid = self.smem.load32(self.mm0 + mm * self.mm_stride + 4) << 8 | mm
        cpu.insn_begin()
        smem = self.smem
        off = self.tlb0 + (cpu.id * TLB_SIZE + (vpn & (TLB_SIZE - 1))) * 16
        tag = (mmid << 16 | vpn) + 1
        pte = smem.load64(off + 8) if smem.load64(off) == tag else 0
        via_tlb = bool(pte) and (not write or bool(pte & PTE_WRITE))
        if not via_tlb:
            pte = self.walk(cpu, mm, vpn, "MMU page walk")
            if not pte & PTE_PRESENT or write and not pte & PTE_WRITE:
                cpu.insn_end()
                return False
            smem.store64(off + 8, pte)
            smem.store64(off, tag)
        self._load_store(cpu, mm, vpn, pte, write, via_tlb)
        cpu.insn_end()
        return True

    def _load_store(self, cpu, mm: int, vpn: int, pte: int, write: bool, via_tlb: bool) -> None:
        pool, pmem = self.pool, self.pmem
        ref = pte >> FLAG_BITS
        pfn = ref & PFN_MASK
        f = self.page0 + pfn * 128
        data = self.pool_data0 + pfn * self.page_size
        word = pmem.load64(data)
        alive = pmem.load64(f) == (ref >> PFN_BITS) << 32 | PAGE_ALLOCATED
        want = ZERO_STAMP if pte & PTE_SPECIAL else None
        if not alive or (word != want if want is not None else word & 0xFFFF != vpn):
            stale = via_tlb and self.walk(cpu, mm, vpn, "MMU page walk", report=False) >> FLAG_BITS != ref
            how = "a TLB entry" if via_tlb else "the page table"
            if via_tlb and not stale:
                how = "a TLB entry the page table still backs (the page was freed while mapped)"
            cpu.report(STALE_TLB if stale else ACCESS_FREED_PAGE,
                       f"cpu {cpu.id} {'writes' if write else 'reads'} vpn {vpn} of mm {mm} through "
                       f"{how} to page {pfn} gen {ref >> PFN_BITS}, which is "
                       f"{'freed or reused' if not alive else 'another page now (stamp mismatch)'}",
                       mm=mm, vpn=vpn, entry=describe_entry(pte), **pool.describe(pfn, ref >> PFN_BITS))
            return
        if via_tlb:
            cur = self.walk(cpu, mm, vpn, "MMU page walk")
            if cur & PTE_PRESENT and cur >> FLAG_BITS != ref:
                cpu.report(STALE_TLB, f"cpu {cpu.id} {'writes' if write else 'reads'} vpn {vpn} of mm {mm} "
                           f"through a stale TLB entry to page {pfn} while the page table maps "
                           f"{describe_entry(cur)}: two CPUs see different memory at one address",
                           mm=mm, vpn=vpn, tlb=describe_entry(pte), pte=describe_entry(cur))
                return
        if write:
            if pmem.load32(f + _MAPCOUNT) > 0 and not self.smem.load32(self.mm_off(mm, "forking")):
                cpu.report(COW_WRITE_SHARED, f"cpu {cpu.id} writes vpn {vpn} of mm {mm} to page {pfn}, which "
                           f"{pmem.load32(f + _MAPCOUNT) + 1} mappings share: a COW page changed under another mm",
                           mm=mm, vpn=vpn, entry=describe_entry(pte), **pool.describe(pfn))
                return
            pmem.fetch_add64(data + 8, 1)

    # -- GUP ---------------------------------------------------------------------------
    def gup_fast(self, cpu, mm: int, vpn: int, write: bool) -> int:
        """get_user_pages_fast(): a lockless walk with interrupts off; a page reference or 0.

        The table cannot be freed under it because free_pgtables waits for
        the flush IPI, which this CPU does not take until irqs are back on."""
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
            if not pte & PTE_PRESENT or pte & PTE_SPECIAL or write and not pte & PTE_WRITE:
                return 0
            ref = pte >> FLAG_BITS
            if not self.pool.refcount(ref & PFN_MASK).inc_not_zero(cpu):
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
        pte = self.pmem.load64(self.table_off(table, vmf.vpn % self.geometry.pte))
        ref = 0
        if pte & PTE_PRESENT and not pte & PTE_SPECIAL and (not vmf.write or pte & PTE_WRITE):
            ref = pte >> FLAG_BITS
            self.pool.refcount(ref & PFN_MASK).inc(cpu)
        ptl.unlock(cpu)
        return ref

    def use_pinned_page(self, cpu, ref: int, what: str) -> None:
        """What a GUP caller does with its page (DMA, a copy): the reference must keep it alive."""
        self.pool.read(cpu, ref, 0, what)
        cpu.window("gup:using-the-page")
        self.pool.read(cpu, ref, 0, what)
        self.unpin_user_page(cpu, ref)

    def unpin_user_page(self, cpu, ref: int) -> None:
        """unpin_user_page(): drop the reference GUP took."""
        self.count("gup_unpins")
        self.pool.put_page(cpu, ref, ANON_SITE)
