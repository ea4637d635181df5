"""The CPU's own loads and stores: the TLB, the MMU's walk, and what the access finds.

The model's checks here: a CPU loads through a translation to a page that
is freed, or that a returned call retired (stale-tlb: see tlb.py), or
writes a page another mm still shares (a broken COW).
"""

from __future__ import annotations

from policies.mm.checks import ACCESS_FREED_PAGE, COW_WRITE_SHARED, STALE_TLB, WALK_FREED_TABLE
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT, PTE_SPECIAL, PTE_WRITE, describe_entry
from policies.mm.rmap import _MAPCOUNT, LAST_WRITER, ZERO_STAMP
from policies.mm.tlb import PWC_SIZE, PWC_STRIDE, TLB_SIZE, TLB_STRIDE, Tlb
from shm.pool import PAGE_ALLOCATED, PAGE_STRIDE, PFN_BITS, PFN_MASK


class Access(Tlb):
    """One user load or store, as the hardware does it."""

    def access(self, cpu, mm: int, vpn: int, write: bool) -> bool:
        """One user load or store: through the TLB, else the MMU's walk.  False: it must fault.

        The whole translation and the access are one instruction (insn_begin): no
        flush IPI lands in the middle, and a broadcast TLBI waits for it."""
        mm_mem = self.mm_mem
        mmid = mm_mem.load32(self.mm0 + mm * self.mm_stride + 4) << 8 | mm
        cpu.insn_begin()
        off = self.tlb0 + (cpu.id * TLB_SIZE + (vpn & (TLB_SIZE - 1))) * TLB_STRIDE
        tag = (mmid << 16 | vpn) + 1
        pte = mm_mem.load64(off + 8) if mm_mem.load64(off) == tag else 0
        via_tlb = bool(pte) and (not write or bool(pte & PTE_WRITE))
        if via_tlb:
            epoch = mm_mem.load64(off + 16)
        else:
            pte = self.mmu_walk(cpu, mm, mmid, vpn)
            if not pte & PTE_PRESENT or write and not pte & PTE_WRITE:
                cpu.insn_end()
                return False
            epoch = mm_mem.load64(self.tlb_epoch_off)
            mm_mem.store64(off + 8, pte)
            mm_mem.store64(off + 16, epoch)
            mm_mem.store64(off, tag)
        self._load_store(cpu, mm, mmid, vpn, pte, write, epoch if via_tlb else -1)
        cpu.insn_end()
        return True

    def mmu_walk(self, cpu, mm: int, mmid: int, vpn: int) -> int:
        """The MMU's walk to vpn's PTE on a TLB miss: through this CPU's cached pmd entry if it has
        one (the paging-structure cache), else from the pgd, caching the pmd entry it passed."""
        g = self.geometry
        slot = vpn // g.pte
        poff = self.pwc0 + (cpu.id * PWC_SIZE + (slot & (PWC_SIZE - 1))) * PWC_STRIDE
        mm_mem = self.mm_mem
        tag = (mmid << 16 | slot) + 1
        if mm_mem.load64(poff) == tag:
            table = mm_mem.load64(poff + 8)
            what = "MMU page walk from a cached pmd entry"
        else:
            e = self.walk(cpu, mm, vpn, "MMU page walk", 2)
            if not e & PTE_PRESENT:
                return 0
            table = e >> FLAG_BITS
            mm_mem.store64(poff + 8, table)
            mm_mem.store64(poff, tag)
            what = "MMU page walk"
        walker = self.walker  # read_entry, inlined: on every TLB miss
        pte = walker.load(table, vpn % g.pte)
        if walker.stale:
            self.pool._report_uaf(cpu, table, what, WALK_FREED_TABLE)
        return pte

    def _unflushed_fork_write(self, cpu, mm: int, vpn: int, ref: int) -> bool:
        """A write to a page fork is sharing, by the mm that is forking, through a translation
        fork has not flushed yet: copy_present_pte raises the mapcount, then write-protects the
        PTE, and dup_mmap flushes only at its end (the flush waits for the instruction).  The
        kernel allows it; what it can break, a COW copy taken meanwhile, is checked as a lost
        write.  A write through a translation to a page the PTE no longer maps is not this."""
        if not self.mm_mem.load32(self.mm_off(mm, "forking")):
            return False
        cur = self.walk(cpu, mm, vpn, "MMU page walk", report=False)
        return not cur & PTE_WRITE or cur >> FLAG_BITS == ref

    def _load_store(self, cpu, mm: int, mmid: int, vpn: int, pte: int, write: bool, epoch: int) -> None:
        """The access itself, through `pte` (from the TLB, made in `epoch`, or -1: just walked)."""
        pool, page_mem = self.pool, self.page_mem
        via_tlb = epoch >= 0
        ref = pte >> FLAG_BITS
        pfn = ref & PFN_MASK
        f = self.page0 + pfn * PAGE_STRIDE
        data = self.pool_data0 + pfn * self.page_size
        word = page_mem.load64(data)
        alive = page_mem.load64(f) == (ref >> PFN_BITS) << 32 | PAGE_ALLOCATED
        want = ZERO_STAMP if pte & PTE_SPECIAL else None
        if not alive or (word != want if want is not None else word & 0xFFFF != vpn):
            stale = via_tlb and self.walk(cpu, mm, vpn, "MMU page walk", report=False) >> FLAG_BITS != ref
            how = "a TLB entry" if via_tlb else "the page table"
            if via_tlb and not stale:
                how = "a TLB entry the page table still backs (the page was freed while mapped)"
            cpu.report(
                STALE_TLB if stale else ACCESS_FREED_PAGE,
                f"cpu {cpu.id} {'writes' if write else 'reads'} vpn {vpn} of mm {mm} through "
                f"{how} to page {pfn} gen {ref >> PFN_BITS}, which is "
                f"{'freed or reused' if not alive else 'another page now (stamp mismatch)'}",
                mm=mm,
                vpn=vpn,
                entry=describe_entry(pte),
                **pool.describe(pfn, ref >> PFN_BITS),
            )
            return
        if via_tlb and (retired := self.tlb_stale_since(mm, vpn, epoch)):
            cur = self.walk(cpu, mm, vpn, "MMU page walk", report=False)
            cpu.report(
                STALE_TLB,
                f"cpu {cpu.id} {'writes' if write else 'reads'} vpn {vpn} of mm {mm} through a TLB entry "
                f"to page {pfn} made in TLB epoch {epoch}, retired in epoch {retired} by a call that "
                f"has returned (munmap, mmap, MADV_DONTNEED or a COW fault); the page table maps "
                f"{describe_entry(cur)}",
                mm=mm,
                vpn=vpn,
                tlb=describe_entry(pte),
                pte=describe_entry(cur),
            )
            return
        if write:
            if page_mem.load32(f + _MAPCOUNT) > 0 and not self._unflushed_fork_write(cpu, mm, vpn, ref):
                cpu.report(
                    COW_WRITE_SHARED,
                    f"cpu {cpu.id} writes vpn {vpn} of mm {mm} to page {pfn}, which "
                    f"{page_mem.load32(f + _MAPCOUNT) + 1} mappings share: a COW page changed under another mm",
                    mm=mm,
                    vpn=vpn,
                    entry=describe_entry(pte),
                    **pool.describe(pfn),
                )
                return
            page_mem.store64(f + LAST_WRITER, mmid)  # first: who sees the count move sees the writer
            page_mem.fetch_add64(data + 8, 1)
