"""VMAs and the VMA index: what the mmap_sem thread wants to look up without the big lock.

A VMA lives in a kmem_cache (`vm_area_cachep`): checked like pages, and
optionally SLAB_TYPESAFE_BY_RCU.  Each mm's index is a sorted array of
(start, end, vma) published by one pointer: a writer (serialised by
mmap_lock held for write) builds a copy, swaps the pointer atomically and
frees the old array with call_rcu, so an RCU reader always walks a whole,
consistent array.  This is the property the thread wants of the maple tree.

An entry may be RESERVED: the maple tree's ZERO entry from the thread, "lookups
see NULL, but attempts to allocate do not see it as free" (Wilcox, 2019-12-09),
so an unmapped range is not handed out again before its TLB entries are gone.
"""

from __future__ import annotations

import numpy as np

from policies.mm.pgtable import PageTables
from shm import REFCOUNT, RWSEM, SEQCOUNT, rcu_callback
from shm.layout import field_offsets
from shm.slab import SLOT_MASK

MAX_VMAS = 16
RESERVED = -1

VM_READ = 0x1
VM_WRITE = 0x2
VM_BABY = 0x100
VM_ZOMBIE = 0x200
VM_DETACHED = 0x400
VM_ZAPPED = 0x800
VM_FLAG_NAMES = {
    VM_READ: "read",
    VM_WRITE: "write",
    VM_BABY: "BABY",
    VM_ZOMBIE: "ZOMBIE",
    VM_DETACHED: "detached",
    VM_ZAPPED: "zapped",
}

VMA = np.dtype(
    [
        ("vm_start", "<i4"),
        ("vm_end", "<i4"),
        ("vm_flags", "<i4"),
        ("vm_mm", "<i4"),
        ("anon_vma", "<i4"),
        ("vm_lock_seq", "<i4"),
        ("zap_start", "<i4"),
        ("zap_end", "<i4"),
        ("vm_refcnt", REFCOUNT),
        ("vm_seq", SEQCOUNT),
        ("vm_lock", RWSEM),
    ],
    align=True,
)

VMA_INDEX = np.dtype(
    [
        ("nr", "<i4"),
        ("pad", "<i4"),
        ("span", "<i8", (MAX_VMAS,)),  # end << 32 | start, sorted
        ("vma", "<i8", (MAX_VMAS,)),
    ]
)
_SPAN0 = field_offsets(VMA_INDEX)["span"]
_VMA0 = field_offsets(VMA_INDEX)["vma"]


def vm_flags_text(flags: int) -> str:
    return "|".join(n for b, n in VM_FLAG_NAMES.items() if flags & b) or "0"


@rcu_callback("mm: free a VMA index array")
def free_index_rcu(cpu, ref: int) -> None:
    cpu.ctx.mm.index_cache.free(cpu, ref)


class VmaTree(PageTables):
    """vm_area_alloc/free and the RCU-published index: the model's third layer."""

    # -- VMAs ------------------------------------------------------------------
    def vma_off(self, vma: int, field: str) -> int:
        return self.vma_cache.off(vma, field)

    def vma_field(self, cpu, vma: int, field: str, what: str = "read") -> int:
        return self.vma_cache.load32(cpu, vma, field, what)

    def vm_area_alloc(self, cpu, mm: int, start: int, end: int, flags: int) -> int | None:
        vma = self.vma_cache.alloc(cpu)
        if vma is None:
            return None
        mem, o = self.mm_mem, self.vma_cache.off
        mem.store32(o(vma, "vm_start"), start)
        mem.store32(o(vma, "vm_end"), end)
        mem.store32(o(vma, "vm_flags"), flags)
        mem.store32(o(vma, "vm_mm"), self.mm_id(mm))
        mem.store32(o(vma, "anon_vma"), 0)
        mem.store32(o(vma, "vm_lock_seq"), -1)
        mem.store32(o(vma, "vm_refcnt"), 1)
        mem.store32(o(vma, "vm_seq"), 0)
        mem.store32(o(vma, "zap_start"), 0)
        mem.store32(o(vma, "zap_end"), 0)
        return vma

    def vm_area_free(self, cpu, vma: int) -> None:
        self.vma_cache.free(cpu, vma)

    def remove_vma(self, cpu, vma: int) -> None:
        """remove_vma(): a VMA out of the tree goes, as the mechanism frees VMAs (its vma_free:
        at once, after a grace period, after its readers), by default vm_area_free at once."""
        if self._vma_free is None:
            self.vm_area_free(cpu, vma)
        else:
            self._vma_free(cpu, vma)

    def vma_set_flags(self, vma: int, flags: int) -> None:
        self.mm_mem.fetch_or32(self.vma_cache.off(vma, "vm_flags"), flags)

    def vma_mark_zapped(self, vma: int, start: int, end: int) -> None:
        """The zap of [start, end) has passed its tables (it calls this for each table, still
        holding the table's ptl): record which part of the VMA it covered so far, then set
        VM_ZAPPED.  A fault that installs a PTE there afterwards leaves a PTE behind its VMA;
        one that installs in the part a split kept, or in a table the zap has not reached,
        does not."""
        mem, o = self.mm_mem, self.vma_cache.off
        lo = max(start, mem.load32(o(vma, "vm_start")))
        if not mem.load32(o(vma, "vm_flags")) & VM_ZAPPED:
            mem.store32(o(vma, "zap_start"), lo)
        mem.store32(o(vma, "zap_end"), max(lo, min(end, mem.load32(o(vma, "vm_end")))))
        self.vma_set_flags(vma, VM_ZAPPED)

    def vma_clear_flags(self, vma: int, flags: int) -> None:
        self.mm_mem.fetch_and32(self.vma_cache.off(vma, "vm_flags"), ~flags)

    def vma_describe(self, vma: int) -> dict:
        if not vma or vma == RESERVED:
            return {"vma": "none"}
        slot = vma & SLOT_MASK
        o = self.vma_cache.objects[slot]
        return {
            "vma": f"[{int(o['vm_start'])}, {int(o['vm_end'])})",
            "vma_slot": int(slot),
            "vm_flags": vm_flags_text(int(o["vm_flags"])),
            "vm_mm": int(o["vm_mm"]),
            **{k: v for k, v in self.vma_cache.describe(vma).items() if k in ("gen", "ref_gen", "state")},
        }

    # -- the index -------------------------------------------------------------
    def vma_lookup(self, cpu, mm: int, vpn: int) -> int:
        """vma_lookup(): the VMA covering vpn, 0 if none (a RESERVED range is none).

        A binary search of the sorted array, as the maple tree's walk is a
        search of sorted ranges.  The caller holds mmap_lock or is inside an
        RCU read-side section."""
        mem = self.mm_mem
        idx = mem.load64(self.mm_off(mm, "index"))
        if not idx:
            return 0
        c = self.index_cache
        base = c.off(idx, "nr")
        lo, hi = 0, mem.load32(base)
        spans = base + _SPAN0
        found = 0
        while lo < hi:
            mid = (lo + hi) >> 1
            span = mem.load64(spans + 8 * mid)
            if span >> 32 <= vpn:
                lo = mid + 1
            elif span & 0xFFFFFFFF > vpn:
                hi = mid
            else:
                found = mem.load64(base + _VMA0 + 8 * mid)
                break
        c.check(cpu, idx, "vma_lookup: walking the VMA index")
        return 0 if found == RESERVED else found

    def find_vma(self, cpu, mm: int, vpn: int) -> int:
        """find_vma(): the first VMA that ends above vpn, which may begin above it too (0 if none):
        a caller that wants the VMA covering vpn checks vm_start, or calls vma_lookup."""
        for _, e, v in self.index_entries(mm):
            if vpn < e and v != RESERVED:
                return v
        return 0

    def index_entries(self, mm: int) -> list[tuple[int, int, int]]:
        """The current entries (start, end, vma); a writer's view, under mmap_lock for write."""
        idx = self.mm_mem.load64(self.mm_off(mm, "index"))
        if not idx:
            return []
        base = self.index_cache.off(idx, "nr")
        mem = self.mm_mem
        spans = [mem.load64(base + _SPAN0 + 8 * i) for i in range(mem.load32(base))]
        return [(span & 0xFFFFFFFF, span >> 32, mem.load64(base + _VMA0 + 8 * i)) for i, span in enumerate(spans)]

    def index_parts(self, mm: int, start: int, end: int, per_table: bool = False) -> list[tuple[int, int, int]]:
        """(start, end, vma) of each VMA's part of [start, end), under mmap_lock for read (madvise,
        migration), cut at page-table boundaries if `per_table`.  A RESERVED range has none, nor
        has a BABY VMA: an unmap that no longer holds mmap_lock still tears its range down
        (rcu_vma_refcount), so nothing of it is mapped yet and its tables may be going."""
        parts = []
        span = self.geometry.pte
        for s, e, v in self.index_entries(mm):
            if v == RESERVED or s >= end or e <= start or self.mm_mem.load32(self.vma_off(v, "vm_flags")) & VM_BABY:
                continue
            lo, hi = max(s, start), min(e, end)
            while lo < hi:
                cut = min(hi, (lo // span + 1) * span) if per_table else hi
                parts.append((lo, cut, v))
                lo = cut
        return parts

    def index_publish(self, cpu, mm: int, entries: list[tuple[int, int, int]]) -> bool:
        """Publish a new sorted array and retire the old one after a grace period.

        False (nothing changed) when there is no room: mmap fails with ENOMEM."""
        entries = sorted(entries)
        if len(entries) > MAX_VMAS:
            return False
        new = self.index_cache.alloc(cpu)
        if new is None:
            self.machine.rcu.barrier(cpu)
            new = self.index_cache.alloc(cpu)
        if new is None:
            return False  # ENOMEM; arrays nobody refers to are a leak the sweep reports
        base = self.index_cache.off(new, "nr")
        mem = self.mm_mem
        mem.fill(base, VMA_INDEX.itemsize, 0)
        mem.store32(base, len(entries))
        for i, (s, e, v) in enumerate(entries):
            mem.store64(base + _SPAN0 + 8 * i, e << 32 | s)
            mem.store64(base + _VMA0 + 8 * i, v)
        cpu.window("index_publish:before-swap")
        old = self.mm_mem.xchg64(self.mm_off(mm, "index"), new)
        if old:
            self.machine.rcu.call(cpu, free_index_rcu, old)
        return True

    def index_clear(self, cpu, mm: int) -> None:
        """The mm is going away: unpublish its index, retired after a grace period."""
        old = self.mm_mem.xchg64(self.mm_off(mm, "index"), 0)
        if old:
            self.machine.rcu.call(cpu, free_index_rcu, old)

    def get_unmapped_area(self, entries: list[tuple[int, int, int]], npages: int, hint: int) -> int:
        """The first gap of npages at or after hint (then from 0); RESERVED ranges are not free. -1 if none."""
        limit = self.geometry.pages
        for start in (hint, 0):
            at = start
            for s, e, _ in sorted(entries):
                if e <= at:
                    continue
                if s - at >= npages:
                    return at
                at = max(at, e)
            if limit - at >= npages:
                return at
        return -1
