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

When is a stale translation a bug?  The kernel batches flushes: a zap
clears PTEs under each ptl and flushes once in tlb_finish_mmu, so until
MADV_DONTNEED or munmap returns, another CPU may still load the old page
through its TLB while a fault has already installed a new one.  What the
kernel promises is the state when the call returns.  So the model keeps a
TLB epoch: a fill records the epoch it read after its walk; clearing a PTE
first moves the epoch on and notes it for the page (`tlb_retire`); and a
call that promises the range has no old translation left stamps it when it
returns (`tlb_promise`: munmap, mmap and MADV_DONTNEED, and a COW fault
before it publishes its new PTE).  A CPU that uses an entry older than a
retirement that was since promised holds a stale translation.
"""

from __future__ import annotations

import numpy as np

from policies.mm.vma import VmaTree
from shm.events import EV

TLB_SIZE = 16
TLB_ENTRY = np.dtype([("tag", "<i8"), ("pte", "<i8"), ("epoch", "<i8")])
TLB_STRIDE = TLB_ENTRY.itemsize
TLB_PROMISE = np.dtype([("retired", "<i8"), ("promised", "<i8")])
_EV_FLUSH = EV["tlb-flush"]


def tlb_tag(mmid: int, vpn: int) -> int:
    return (mmid << 16 | vpn) + 1


class Tlb(VmaTree):
    """TLB lookup, fill and flush: the model's fourth layer."""

    broadcast_tlbi = False

    def tlb_entry_off(self, cpu_id: int, vpn: int) -> int:
        return self.tlb0 + (cpu_id * TLB_SIZE + (vpn & (TLB_SIZE - 1))) * TLB_STRIDE

    def tlb_fill(self, cpu, mmid: int, vpn: int, pte: int, epoch: int) -> None:
        """A translation enters this CPU's TLB, made in TLB epoch `epoch` (read after the walk)."""
        off = self.tlb_entry_off(cpu.id, vpn)
        self.mm_mem.store64(off + 8, pte)
        self.mm_mem.store64(off + 16, epoch)
        self.mm_mem.store64(off, tlb_tag(mmid, vpn))

    def tlb_epoch(self) -> int:
        return self.mm_mem.load64(self.tlb_epoch_off)

    def tlb_retire(self) -> int:
        """Move the TLB epoch on before clearing PTEs: a translation made since reads a later one."""
        return self.mm_mem.fetch_add64(self.tlb_epoch_off, 1) + 1

    def tlb_retired(self, mm: int, vpn: int, epoch: int) -> None:
        """mm's vpn loses its translation in `epoch` (from tlb_retire): one made before is old."""
        self.mm_mem.store64(self.promise0 + (mm * self.geometry.pages + vpn) * TLB_PROMISE.itemsize, epoch)

    def tlb_promise(self, cpu, mm: int, start: int, end: int) -> None:
        """From now on no CPU may use a translation of mm's [start, end) that was retired: the
        caller returns to user space having flushed them (the model's check, not a kernel function)."""
        epoch = self.tlb_retire()
        size = TLB_PROMISE.itemsize
        base = self.promise0 + mm * self.geometry.pages * size + 8
        for v in range(start, min(end, self.geometry.pages)):
            self.mm_mem.store64(base + v * size, epoch)

    def tlb_stale_since(self, mm: int, vpn: int, epoch: int) -> int:
        """The epoch of the promised retirement that makes a translation made in `epoch` stale, or 0."""
        off = self.promise0 + (mm * self.geometry.pages + vpn) * TLB_PROMISE.itemsize
        retired = self.mm_mem.load64(off)
        if retired <= epoch or self.mm_mem.load64(off + 8) < retired:
            return 0
        return retired

    def _flush_handler(self, target: int, arg: tuple[int, int, int]) -> None:
        """The IPI handler, run for `target`: drop its entries of (mm, [start, end))."""
        mmid, start, end = arg
        mem = self.mm_mem
        if end - start >= TLB_SIZE:
            vpns = range(start, start + TLB_SIZE)
        else:
            vpns = range(start, end)
        lo, hi = tlb_tag(mmid, start), tlb_tag(mmid, end)
        for v in vpns:
            off = self.tlb_entry_off(target, v)
            if lo <= mem.load64(off) < hi:
                mem.store64(off, 0)

    def flush_tlb_mm_range(self, cpu, mm: int, start: int, end: int) -> None:
        """flush_tlb_mm_range(): on return no CPU holds a translation of mm in [start, end)."""
        cpu.trace(_EV_FLUSH, start)
        flush = cpu.tlbi_broadcast if self.broadcast_tlbi else cpu.smp_call_function_many
        flush(range(self.ncpus), self._flush_handler, (self.mm_id(mm), start, end))

    def flush_tlb_mm(self, cpu, mm: int) -> None:
        self.flush_tlb_mm_range(cpu, mm, 0, self.geometry.pages)
