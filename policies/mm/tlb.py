"""Per-CPU TLBs and flush IPIs.

Each CPU has a small direct-mapped TLB in shared memory, tagged by mm (an
ASID: the mm's slot and generation) and virtual page.  Only the CPU itself
fills its TLB, from inside an interrupts-off section (a load instruction is
atomic with respect to interrupts).  flush_tlb_mm_range() sends an IPI to
every CPU (smp_call_function_many) whose handler drops the matching entries;
a CPU with interrupts off acknowledges only when it enables them.  That is
what makes it safe to free pages and page tables after the flush.

A model with `broadcast_tlbi` flushes as arm64 does (TLBI ...IS): no IPI,
the flush waits only for accesses in flight, so a CPU walking with
interrupts off (fast GUP) is not held off by it.
"""

from __future__ import annotations

import numpy as np

from policies.mm.vma import VmaTree
from shm.events import EV

TLB_SIZE = 16
TLB_ENTRY = np.dtype([("tag", "<i8"), ("pte", "<i8")])
_EV_FLUSH = EV["tlb-flush"]


def tlb_tag(mmid: int, vpn: int) -> int:
    return (mmid << 16 | vpn) + 1


class Tlb(VmaTree):
    """TLB lookup, fill and flush: the model's fourth layer."""

    broadcast_tlbi = False

    def tlb_fill(self, cpu, mmid: int, vpn: int, pte: int) -> None:
        off = self.tlb0 + (cpu.id * TLB_SIZE + (vpn & (TLB_SIZE - 1))) * 16
        self.mm_mem.store64(off + 8, pte)
        self.mm_mem.store64(off, (mmid << 16 | vpn) + 1)

    def _flush_handler(self, target: int, arg: tuple[int, int, int]) -> None:
        """The IPI handler, run for `target`: drop its entries of (mm, [start, end))."""
        mmid, start, end = arg
        mem = self.mm_mem
        if end - start >= TLB_SIZE:
            vpns = range(start, start + TLB_SIZE)
        else:
            vpns = range(start, end)
        base = self.tlb0 + target * TLB_SIZE * 16
        lo, hi = tlb_tag(mmid, start), tlb_tag(mmid, end)
        for v in vpns:
            off = base + (v & (TLB_SIZE - 1)) * 16
            if lo <= mem.load64(off) < hi:
                mem.store64(off, 0)

    def flush_tlb_mm_range(self, cpu, mm: int, start: int, end: int) -> None:
        """flush_tlb_mm_range(): on return no CPU holds a translation of mm in [start, end)."""
        cpu.trace(_EV_FLUSH, start)
        flush = cpu.tlbi_broadcast if self.broadcast_tlbi else cpu.smp_call_function_many
        flush(range(self.ncpus), self._flush_handler, (self.mm_id(mm), start, end))

    def flush_tlb_mm(self, cpu, mm: int) -> None:
        self.flush_tlb_mm_range(cpu, mm, 0, self.geometry.pages)
