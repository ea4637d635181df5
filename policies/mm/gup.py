"""mm/gup.c: get_user_pages_fast's lockless walk, follow_page, and unpinning.

FOLL_GET takes a plain reference (get_user_pages, vmsplice); FOLL_PIN adds
GUP_PIN_COUNTING_BIAS (pin_user_pages, RDMA, O_DIRECT), and a R/O FOLL_PIN
of an anon page that is not exclusive first asks for an unshare fault
(gup_must_unshare; a7f226604170), so that the pinned page stays the one the
process maps.  A driver's long-term pins (FOLL_LONGTERM) are kept in
per-CPU slots past the operation that took them; what they must still see
when released is mm.py's check_pin.
"""

from __future__ import annotations

import numpy as np

from policies.mm.checks import PIN_FOREIGN_WRITE
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT, PTE_SPECIAL, PTE_WRITE
from policies.mm.rmap import ANON_SITE, GUP_PIN_COUNTING_BIAS, LAST_WRITER, Rmap
from policies.mm.vmf import Vmf
from shm.layout import field_offsets
from shm.pool import PAGE_STRIDE, PFN_MASK

FOLL_WRITE = 0x1
FOLL_GET = 0x2
FOLL_PIN = 0x4
FOLL_LONGTERM = 0x8
GUP_MUST_UNSHARE = -1  # follow_page's -EMLINK: fault with FAULT_FLAG_UNSHARE, then follow again

GUP_PIN = np.dtype(
    [
        ("ref", "<i8"),
        ("writes", "<i8"),
        ("mmid", "<i8"),
        ("mm", "<i4"),
        ("vpn", "<i4"),
        ("flags", "<i4"),
        ("pad", "<i4"),
        ("unmaps", "<i8"),
    ]
)
_PIN = field_offsets(GUP_PIN)


class Gup(Rmap):
    """Fast and slow GUP, and what a caller does with the page it pinned."""

    def gup_must_unshare(self, ref: int, gup_flags: int) -> bool:
        """gup_must_unshare(): a R/O FOLL_PIN of an anon page another mapping may share (not
        PageAnonExclusive, a7f226604170) must unshare it first; so must a R/O long-term pin of
        the zero page (`ref` 0; 84209e87c696), which a write would replace."""
        if not gup_flags & FOLL_PIN or gup_flags & FOLL_WRITE:
            return False
        if not ref:
            return bool(gup_flags & FOLL_LONGTERM)
        return not self.page_anon_exclusive(ref)

    def try_grab_page(self, cpu, ref: int, gup_flags: int) -> bool:
        """try_grab_folio_fast(), and under the ptl try_grab_folio(): one reference for FOLL_GET,
        GUP_PIN_COUNTING_BIAS for FOLL_PIN; False if the page is being freed (the fast path's
        folio_try_get: under the ptl a mapped page cannot be)."""
        if not self.pool.refcount(ref & PFN_MASK).inc_not_zero(cpu):
            return False
        if gup_flags & FOLL_PIN:
            self.page_mem.fetch_add32(self._page_word(ref, "_refcount"), GUP_PIN_COUNTING_BIAS - 1)
        return True

    def gup_fast(self, cpu, mm: int, vpn: int, gup_flags: int = FOLL_GET) -> int:
        """get_user_pages_fast(): a lockless walk with interrupts off; a page reference or 0.

        The table cannot be freed under it: free_pgtables waits for an IPI this
        CPU does not take until interrupts are back on, or for an RCU grace
        period, which interrupts off hold off.  After taking the reference it
        checks that neither the pmd nor the PTE changed (gup_fast_pte_range;
        70cbc3cc78a99, "mm: gup: fix the fast GUP race against THP collapse").
        A FOLL_PIN backs off while fork write-protects the mm (gup_fast:
        mm->write_protect_seq), and from a read-only page it would have to
        unshare."""
        g = self.geometry
        got = 0
        seq = self.write_protect_seq(mm)
        start = seq.raw_read() if gup_flags & FOLL_PIN else 0
        if start & 1:
            return 0
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
            write = gup_flags & FOLL_WRITE
            if not pte & PTE_PRESENT or pte & PTE_SPECIAL or write and not pte & PTE_WRITE:
                return 0
            ref = pte >> FLAG_BITS
            if not self.try_grab_page(cpu, ref, gup_flags):
                return 0
            if self.page_mem.load64(pmd_off) != e:
                self.count("gup_fast_pmd_changed")
                self.gup_put_folio(cpu, ref, gup_flags)
                return 0
            if self.read_entry(cpu, table, vpn % g.pte, "gup_fast: recheck") != pte or (
                not pte & PTE_WRITE and self.gup_must_unshare(ref, gup_flags)
            ):
                self.gup_put_folio(cpu, ref, gup_flags)
                return 0
            got = ref
        finally:
            cpu.local_irq_enable()
        if gup_flags & FOLL_PIN and self.gup_fast_raced_fork(cpu, seq, start):
            self.count("gup_fast_fork_raced")
            self.gup_put_folio(cpu, got, gup_flags)
            return 0
        return got

    def gup_fast_raced_fork(self, cpu, seq, start: int) -> bool:
        """read_seqcount_retry(&mm->write_protect_seq): fork began write-protecting meanwhile."""
        return seq.read_retry(cpu, start)

    def follow_page_pte(self, cpu, vmf: Vmf, gup_flags: int = FOLL_GET) -> int:
        """follow_page_pte(): under the ptl, take a reference to the mapped page; 0 if none (a
        fault must map it), GUP_MUST_UNSHARE if a R/O pin must first unshare it."""
        table, ptl = self.pte_tryget_map_lock(cpu, vmf.mm, vmf.vpn, vmf.pmd)
        if not table:
            return 0
        pte = self.page_mem.load64(self.table_off(table, vmf.vpn % self.geometry.pte))
        ref = 0
        if pte & PTE_PRESENT and (not gup_flags & FOLL_WRITE or pte & PTE_WRITE):
            page = self.vm_normal_page(pte)
            if not pte & PTE_WRITE and self.gup_must_unshare(page, gup_flags):
                ref = GUP_MUST_UNSHARE
            elif page and self.try_grab_page(cpu, page, gup_flags):
                ref = page
        ptl.unlock(cpu)
        self.pte_put(cpu, vmf.mm, table, vmf.vpn)
        return ref

    def use_pinned_page(self, cpu, mm: int, ref: int, what: str) -> None:
        """What a GUP caller does with the page it pinned from `mm` (a copy, DMA): the reference
        keeps it alive, and what the pin reads is that mm's memory: a write by another mm while
        it reads is copy-on-write gone wrong."""
        writes = self.pool.read(cpu, ref, 1, what)
        self.pool.read(cpu, ref, 0, what)
        cpu.window("gup:using-the-page")
        self.pool.read(cpu, ref, 0, what)
        self.check_foreign_write(cpu, mm, self.mm_id(mm), ref, writes, what)
        self.unpin_user_page(cpu, ref, FOLL_GET)

    def check_foreign_write(self, cpu, mm: int, mmid: int, ref: int, writes: int, what: str) -> None:
        """Since the pin read `writes`, nobody but the mm it was taken from wrote the page."""
        if self.pool.read(cpu, ref, 1, what) != writes:
            writer = self.page_mem.load64(self.page0 + (ref & PFN_MASK) * PAGE_STRIDE + LAST_WRITER)
            if writer != mmid:
                cpu.report(
                    PIN_FOREIGN_WRITE,
                    f"{what}: page {ref & PFN_MASK}, pinned from mm {mm}, was written by "
                    f"mm id {writer} meanwhile: copy-on-write reused a page the pin still reads",
                    mm=mm,
                    writer=writer,
                    **self.pool.describe(ref & PFN_MASK),
                )

    def unpin_user_page(self, cpu, ref: int, gup_flags: int) -> None:
        """unpin_user_page() for FOLL_PIN, put_page() for FOLL_GET: the caller is done."""
        self.count("gup_unpins")
        self.gup_put_folio(cpu, ref, gup_flags)

    def gup_put_folio(self, cpu, ref: int, gup_flags: int) -> None:
        """gup_put_folio(): drop what try_grab_page took."""
        if gup_flags & FOLL_PIN:
            self.page_mem.fetch_sub32(self._page_word(ref, "_refcount"), GUP_PIN_COUNTING_BIAS - 1)
        self.pool.put_page(cpu, ref, ANON_SITE)

    # -- a driver's long-term pins, one slot per CPU --------------------------------
    def pin_slot(self, cpu_id: int) -> int:
        return self.pins0 + cpu_id * GUP_PIN.itemsize

    def keep_pin(self, cpu, mm: int, vpn: int, ref: int, gup_flags: int, unmaps: int) -> None:
        """The page stays pinned past this operation (an RDMA registration, a vmsplice'd pipe
        buffer), in this CPU's slot, with what it held then; `unmaps` is pinned_unmaps(mm, vpn)
        read before the page was looked up."""
        off = self.pin_slot(cpu.id)
        mem = self.mm_mem
        mem.store64(off + _PIN["unmaps"], unmaps)
        mem.store64(off + _PIN["writes"], self.pool.read(cpu, ref, 1, "keep_pin"))
        mem.store64(off + _PIN["mmid"], self.mm_id(mm))
        mem.store32(off + _PIN["mm"], mm)
        mem.store32(off + _PIN["vpn"], vpn)
        mem.store32(off + _PIN["flags"], gup_flags)
        mem.store64(off + _PIN["ref"], ref)
        self.count("pins_kept")

    def held_pin(self, cpu_id: int) -> tuple[int, int, int, int, int, int, int]:
        """What slot `cpu_id` holds: (ref, writes, mmid, mm, vpn, gup_flags, unmaps); ref 0 if
        nothing."""
        off, mem = self.pin_slot(cpu_id), self.mm_mem
        return (
            mem.load64(off + _PIN["ref"]),
            mem.load64(off + _PIN["writes"]),
            mem.load64(off + _PIN["mmid"]),
            mem.load32(off + _PIN["mm"]),
            mem.load32(off + _PIN["vpn"]),
            mem.load32(off + _PIN["flags"]),
            mem.load64(off + _PIN["unmaps"]),
        )

    def take_pin(self, cpu_id: int) -> int:
        """Empty slot `cpu_id`; the page it held (0 if none), which the caller now releases."""
        return self.mm_mem.xchg64(self.pin_slot(cpu_id) + _PIN["ref"], 0)
