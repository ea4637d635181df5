"""mm/madvise.c: MADV_DONTNEED, the zap that runs beside faults under mmap_lock for read.

jemalloc-like allocators give memory back this way without unmapping it;
the pte_ref seed's workload.  Each VMA's part is zapped into its own
mmu_gather (zap_page_range_single), so its pages are flushed and freed
once, after the ptls were dropped, and not per table.
"""

from __future__ import annotations

from policies.mm.vma import RESERVED
from policies.mm.zap import Zap


class Madvise(Zap):
    """madvise(2)'s advice that changes the page tables."""

    def madvise_dontneed(self, cpu, mm: int, start: int, end: int) -> None:
        """madvise(MADV_DONTNEED) of [start, end) (madvise_dontneed_single_vma): each VMA's part
        zapped, flushed and freed; when it returns, no CPU may hold a translation of those parts.
        A hole is -ENOMEM and promises nothing: a munmap may be tearing it down right now."""
        lock = self.mmap_lock(mm)
        lock.down_read(cpu)
        done: list[tuple[int, int]] = []
        try:
            for s, e, v in self.index_entries(mm):
                if v != RESERVED and s < end and e > start:
                    self.zap_page_range_single(cpu, mm, max(s, start), min(e, end))
                    done.append((max(s, start), min(e, end)))
        finally:
            lock.up_read(cpu)
        for s, e in done:
            self.tlb_promise(cpu, mm, s, e)

    def zap_page_range_single(self, cpu, mm: int, start: int, end: int) -> None:
        """zap_page_range_single(): one VMA's range, with its own mmu_gather."""
        tlb = self.tlb_gather_mmu(cpu, mm)
        self.zap_page_range(cpu, tlb, start, end)
        self.tlb_finish_mmu(cpu, tlb)
