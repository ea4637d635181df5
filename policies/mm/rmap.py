"""mm/rmap.c and struct page bookkeeping: mapcounts, references, RSS, anon_vma_prepare.

A page's _mapcount counts its mappings (-1: none), its _refcount the
mappings and every other reference (GUP's, a COW copy in flight); the mm's
RSS counts the normal pages its tables map (check_mm verifies it at exit).
The zero page is special: mapped by PTE_SPECIAL entries that count nothing.

PageAnonExclusive (6c287605fd56, "mm: remember exclusively mapped anonymous
pages with PG_anon_exclusive") marks an anon page that only one mapping can
reach: a write fault reuses it whatever its count, and only such a page may
be FOLL_PIN-pinned.  A FOLL_PIN pin adds GUP_PIN_COUNTING_BIAS to _refcount,
so that folio_maybe_dma_pinned() tells fork to copy the page rather than
share it.
"""

from __future__ import annotations

from policies.mm.checks import ANON_VMA_UNLOCKED, RMAP_UNDERFLOW
from policies.mm.pgtable import FLAG_BITS, PTE_SPECIAL
from policies.mm.tlb import Tlb
from shm import alloc_site
from shm.pool import PAGE_FIELDS, PAGE_STRIDE, PFN_MASK

ANON_SITE = alloc_site("mm: anonymous page")
ZERO_SITE = alloc_site("mm: the zero page")
ZERO_STAMP = 0x5A45524F
_PRIVATE = PAGE_FIELDS["private"]
_MAPCOUNT = PAGE_FIELDS["_mapcount"]
_REFCOUNT = PAGE_FIELDS["_refcount"]
_FLAGS = PAGE_FIELDS["flags"]
LAST_WRITER = _PRIVATE + 24  # struct page word: the id of the mm whose CPU last wrote the page

PG_ANON_EXCLUSIVE = 1 << 1  # beside swap.py's PG_LOCKED in struct page's flags
GUP_PIN_COUNTING_BIAS = 1024


def stamp(anon: int, vpn: int) -> int:
    """What a new anonymous page holds in its first word: whose it is, where it was mapped."""
    return anon << 16 | vpn


class Rmap(Tlb):
    """struct page's mapcount and references, the mm's RSS, and anon_vma_prepare."""

    def _page_word(self, ref: int, field: str) -> int:
        return self.pool.field_off(ref & PFN_MASK, field)

    def page_add_anon_rmap(self, ref: int, anon: int, vpn: int, *, exclusive: bool) -> None:
        """The page's first mapping (folio_add_new_anon_rmap; RMAP_EXCLUSIVE when only this
        mapping can reach it)."""
        page_mem, f = self.page_mem, self.page0 + (ref & PFN_MASK) * PAGE_STRIDE
        page_mem.store32(f + _MAPCOUNT, 0)
        page_mem.store64(f + _PRIVATE, anon)
        page_mem.store64(f + _PRIVATE + 8, vpn)
        if exclusive:
            page_mem.fetch_or32(f + _FLAGS, PG_ANON_EXCLUSIVE)
        else:
            page_mem.fetch_and32(f + _FLAGS, ~PG_ANON_EXCLUSIVE)

    def page_anon_exclusive(self, ref: int) -> bool:
        """PageAnonExclusive()."""
        return bool(self.page_mem.load32(self._page_word(ref, "flags")) & PG_ANON_EXCLUSIVE)

    def set_page_anon_exclusive(self, ref: int) -> None:
        self.page_mem.fetch_or32(self._page_word(ref, "flags"), PG_ANON_EXCLUSIVE)

    def clear_page_anon_exclusive(self, ref: int) -> None:
        self.page_mem.fetch_and32(self._page_word(ref, "flags"), ~PG_ANON_EXCLUSIVE)

    def note_pinned_unmap(self, mm: int, vpn: int) -> None:
        """The model's record that mm itself unmapped a maybe-pinned page at vpn (zap, under the
        ptl): after that, the pin may rightly outlive the mapping."""
        self.mm_mem.fetch_add64(self.pin_unmaps0 + 8 * (mm * self.geometry.pages + vpn), 1)

    def pinned_unmaps(self, mm: int, vpn: int) -> int:
        return self.mm_mem.load64(self.pin_unmaps0 + 8 * (mm * self.geometry.pages + vpn))

    def folio_try_share_anon_rmap(self, ref: int) -> bool:
        """folio_try_share_anon_rmap_pte(): before the PTE of an exclusive page is replaced by a
        swap or migration entry (it was cleared and flushed), the page stops being exclusive,
        unless it may be pinned: then False, and it stays exclusive (fast GUP pins first, then
        checks the PTE and exclusivity; this clears first, then checks the pin)."""
        self.clear_page_anon_exclusive(ref)
        if self.folio_maybe_dma_pinned(ref):
            self.set_page_anon_exclusive(ref)
            return False
        return True

    def folio_maybe_dma_pinned(self, ref: int) -> bool:
        """folio_maybe_dma_pinned(): a count past GUP_PIN_COUNTING_BIAS may be a FOLL_PIN pin."""
        return self.page_mem.load32(self._page_word(ref, "_refcount")) >= GUP_PIN_COUNTING_BIAS

    def page_dup_rmap(self, cpu, ref: int) -> None:
        """A second mapping of the page (fork): one more mapcount and one more reference."""
        self.page_mem.fetch_add32(self._page_word(ref, "_mapcount"), 1)
        self.pool.refcount(ref & PFN_MASK).inc(cpu)

    def page_remove_rmap(self, cpu, ref: int) -> None:
        if self.page_mem.fetch_sub32(self.page0 + (ref & PFN_MASK) * PAGE_STRIDE + _MAPCOUNT, 1) < 0:
            cpu.report(
                RMAP_UNDERFLOW,
                f"page_remove_rmap: page {ref & PFN_MASK} was not mapped",
                **self.pool.describe(ref & PFN_MASK),
            )

    def add_rss(self, mm: int, n: int) -> None:
        self.mm_mem.fetch_add64(self.mm_off(mm, "rss"), n)

    def add_mm_rss_vec(self, mm: int, n: int) -> None:
        """add_mm_rss_vec(): what zap_pte_range and copy_pte_range counted, added at the end of a table."""
        if n:
            self.add_rss(mm, n)

    def vm_normal_page(self, pte: int) -> int:
        """vm_normal_page(): the page a present PTE maps, 0 for a special mapping (the zero page)."""
        return 0 if pte & PTE_SPECIAL else pte >> FLAG_BITS

    def anon_vma_prepare(self, cpu, mm: int, vma: int) -> int:
        """anon_vma_prepare(): the VMA's anon_vma, allocated under page_table_lock on first use.

        Allocating needs mmap_lock (__anon_vma_prepare: mmap_assert_locked):
        find_mergeable_anon_vma reads the neighbouring VMAs, and fork reads
        the anon_vma twice (anon_vma_fork, vma_needs_copy)."""
        off = self.vma_off(vma, "anon_vma")
        anon = self.mm_mem.load32(off)
        if anon:
            return anon
        if self.mmap_lock(mm).addr not in cpu.held:
            cpu.report(
                ANON_VMA_UNLOCKED,
                f"anon_vma_prepare of VMA {self.vma_describe(vma)['vma']} in mm {mm} "
                "without mmap_lock: the fault holds only its VMA",
                mm=mm,
                **self.vma_describe(vma),
            )
        lock = self.page_table_lock(mm)
        lock.lock(cpu)
        anon = self.mm_mem.load32(off)
        if not anon:
            anon = self.mm_mem.fetch_add32(self.global_off("next_anon_vma"), 1) + 1
            self.mm_mem.store32(off, anon)
        lock.unlock(cpu)
        return anon
