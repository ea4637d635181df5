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

Beside its TLB each CPU has a paging-structure cache (x86's PDE cache,
arm64's walk cache): the pmd entries its MMU walked through, so that a miss
in the TLB reads the PTE table straight from the cached pointer.  A flush
drops those entries only when told that page tables were freed
(mmu_gather's freed_tables: x86 flush_tlb_mm_range(..., freed_tables),
arm64's tlb_flush() choosing TLBI VAE1IS over the last-level VALE1IS); a
flush that leaves them lets the MMU walk a freed table (c2ff4764e03e,
"arm64: tlb: Flush walk cache when unsharing PMD tables").

When is a stale translation a bug?  The kernel batches flushes: a zap
clears PTEs under each ptl and flushes once in tlb_finish_mmu, so until
MADV_DONTNEED or munmap returns, another CPU may still load the old page
through its TLB while a fault has already installed a new one.  What the
kernel promises is the state when the call returns.  So the model keeps a
TLB epoch: a fill records the epoch it read after its walk; clearing a PTE
first moves the epoch on and notes it for the page (`tlb_retire`); a
tlb_finish_mmu notes the epoch its flush covers (every clearing before it:
its own, and through mm_tlb_flush_nested those of zaps in flight); and a
call that promises its range has no old translation left marks, when it
returns, the clearings its flush covered and the epoch it began in
(`tlb_promise`: munmap, mmap and MADV_DONTNEED: whatever a CPU cached of
the range before the call began must be gone; a COW fault, a swap-out and
a migration right after their flush, under the ptl).  A CPU that uses an
entry older than what was promised for its page holds a stale translation.
"""

from __future__ import annotations

import numpy as np

from policies.mm.vma import VmaTree
from shm.events import EV

TLB_SIZE = 16
TLB_ENTRY = np.dtype([("tag", "<i8"), ("pte", "<i8"), ("epoch", "<i8")])
TLB_STRIDE = TLB_ENTRY.itemsize
PWC_SIZE = 4
PWC_ENTRY = np.dtype([("tag", "<i8"), ("table", "<i8")])  # a pmd entry the MMU cached: its PTE table
PWC_STRIDE = PWC_ENTRY.itemsize
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

    def tlb_retire(self, mm: int, vpn: int) -> int:
        """Just before mm's PTE for vpn is cleared: move the TLB epoch on and note it for the page.
        A translation made before reads an older epoch; one made after, a later one."""
        epoch = self.mm_mem.fetch_add64(self.tlb_epoch_off, 1) + 1
        self.mm_mem.store64(self.promise0 + (mm * self.geometry.pages + vpn) * TLB_PROMISE.itemsize, epoch)
        return epoch

    def tlb_call_begin(self) -> int:
        """A call that will promise its range (munmap, mmap, MADV_DONTNEED) begins: the epoch it
        began in, for its `tlb_promise(since=...)`; only its own flushes count from now."""
        self.flush_upto = 0
        return self.tlb_epoch()

    def tlb_promise(self, cpu, mm: int, start: int, end: int, upto: int | None = None, since: int = 0) -> None:
        """The caller returns having flushed every translation of mm's [start, end) made before
        it began (epoch `since`), and every one whose PTE was cleared up to epoch `upto` (by
        default `flush_upto`, what the caller's last tlb_finish_mmu covered): from now on no
        CPU may use one (the model's check, not a kernel function).  A clearing after `upto`,
        by a zap still in flight, is not promised: its own call will."""
        upto = self.flush_upto if upto is None else upto
        size = TLB_PROMISE.itemsize
        base = self.promise0 + mm * self.geometry.pages * size
        mem = self.mm_mem
        for v in range(start, min(end, self.geometry.pages)):
            off = base + v * size
            retired = mem.load64(off)
            promised = max(since, retired if retired <= upto else 0)
            if mem.load64(off + 8) < promised:
                mem.store64(off + 8, promised)

    def tlb_stale_since(self, mm: int, vpn: int, epoch: int) -> int:
        """The promised clearing that makes a translation made in `epoch` stale, or 0."""
        promised = self.mm_mem.load64(self.promise0 + (mm * self.geometry.pages + vpn) * TLB_PROMISE.itemsize + 8)
        return promised if epoch < promised else 0

    def pwc_entry_off(self, cpu_id: int, slot: int) -> int:
        """Where CPU `cpu_id` caches the pmd entry of PTE-table slot `slot` (vpn // entries)."""
        return self.pwc0 + (cpu_id * PWC_SIZE + (slot & (PWC_SIZE - 1))) * PWC_STRIDE

    def _flush_handler(self, target: int, arg: tuple[int, int, int, bool]) -> None:
        """The IPI handler, run for `target`: drop its entries of (mm, [start, end)), and with
        `freed_tables` its cached pmd entries of that range too."""
        mmid, start, end, freed_tables = arg
        mem = self.mm_mem
        if freed_tables:
            first, last = start // self.geometry.pte, (end - 1) // self.geometry.pte
            for slot in range(first, min(last, first + PWC_SIZE - 1) + 1):
                off = self.pwc_entry_off(target, slot)
                if first <= mem.load64(off) - 1 - (mmid << 16) <= last:
                    mem.store64(off, 0)
                    self.count("pwc_flushed")
        if end - start >= TLB_SIZE:
            vpns = range(start, start + TLB_SIZE)
        else:
            vpns = range(start, end)
        lo, hi = tlb_tag(mmid, start), tlb_tag(mmid, end)
        for v in vpns:
            off = self.tlb_entry_off(target, v)
            if lo <= mem.load64(off) < hi:
                mem.store64(off, 0)

    def flush_tlb_mm_range(self, cpu, mm: int, start: int, end: int, freed_tables: bool = False) -> None:
        """flush_tlb_mm_range(): on return no CPU holds a translation of mm in [start, end), nor,
        when page tables of the range were freed, a cached pmd entry of it."""
        cpu.trace(_EV_FLUSH, start)
        flush = cpu.tlbi_broadcast if self.broadcast_tlbi else cpu.smp_call_function_many
        flush(range(self.ncpus), self._flush_handler, (self.mm_id(mm), start, end, freed_tables))

    def flush_tlb_mm(self, cpu, mm: int) -> None:
        self.flush_tlb_mm_range(cpu, mm, 0, self.geometry.pages, freed_tables=True)
