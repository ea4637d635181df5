"""kmem_cache: typed objects in a scenario's segment, checked like the page pool.

A cache is two regions of a segment: a header per object (state, generation,
free-list link, who allocated and freed it) and the objects themselves (a
structured dtype the owner declares).  A reference is ``gen << SLOT_BITS |
slot`` and is never 0.  Touching a freed object, or one whose generation
changed since the reference was taken, is a use-after-free; freeing twice is
a double free.

SLAB_TYPESAFE_BY_RCU (mm/slab_common.c, used for vm_area_struct since 6.15):
a freed object may be handed out again at once, but only as an object of the
same cache, and its memory stays valid for RCU readers.  A reader that finds
an object under RCU and then locks it must check that it is still the object
it looked up.  So for such a cache a changed generation is not a finding (the
caller must revalidate); touching a *free* object outside an RCU read-side
critical section still is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shm.checks import SLAB_DOUBLE_FREE, SLAB_UAF
from shm.events import EV
from shm.layout import Region, field_offsets
from shm.protocols import CpuLike as Cpu
from shm.protocols import MachineLike as Machine

if TYPE_CHECKING:
    from shm._atomic import Memory

SLOT_BITS = 16
SLOT_MASK = (1 << SLOT_BITS) - 1
OBJ_FREE, OBJ_ALLOCATED = 0, 1

CACHE_STATE = np.dtype([("free_head", "<i8"), ("nfree", "<i4"), ("allocs", "<i4")])
OBJ_HEADER = np.dtype(
    [("state", "<i4"), ("gen", "<i4"), ("next", "<i4"), ("alloc_cpu", "<i4"), ("free_cpu", "<i4"), ("pad", "<i4", (3,))]
)
assert field_offsets(OBJ_HEADER)["gen"] == 4  # (state, gen) is one 64-bit word, as a page's

_EV_ALLOC = EV["alloc"]
_EV_FREE = EV["free"]


class KmemCache:
    """kmem_cache_create(name, ...): `count` objects of `dtype`, LIFO reuse."""

    @staticmethod
    def regions(name: str, dtype: np.dtype, count: int) -> list[Region]:
        if not 1 <= count <= SLOT_MASK:
            raise ValueError(f"cache {name}: between 1 and {SLOT_MASK} objects")
        return [
            Region(f"{name}_cache", CACHE_STATE),
            Region(f"{name}_hdr", OBJ_HEADER, count),
            Region(name, dtype, count),
        ]

    def __init__(self, machine: Machine, seg_index: int, name: str, typesafe_by_rcu: bool = False):
        self.machine = machine
        self.name = name
        self.typesafe_by_rcu = typesafe_by_rcu
        seg = machine.segments[seg_index]
        self.seg_index = seg_index
        self.mem: Memory = seg.mem
        lay = seg.layout
        self.count = lay.regions[name].count
        self.stride = lay.stride(name)
        self.base = lay.offset(name)
        self.hdr0 = lay.offset(f"{name}_hdr")
        self._next0 = self.hdr0 + field_offsets(OBJ_HEADER)["next"]  # the free list: a Treiber stack of slots
        self.head_off = lay.offset(f"{name}_cache", 0, "free_head")
        self.nfree_off = lay.offset(f"{name}_cache", 0, "nfree")
        self.allocs_off = lay.offset(f"{name}_cache", 0, "allocs")
        self.objects = seg.view(name)
        self.headers = seg.view(f"{name}_hdr")
        self.fields = field_offsets(seg.layout.regions[name].dtype)

    def init(self) -> None:
        """Every object free, slot 0 handed out first (the boot CPU, before the CPUs start)."""
        n = self.count
        self.headers["state"] = OBJ_FREE
        self.headers["next"] = np.arange(1, n + 1, dtype=np.int32)
        self.headers["next"][-1] = -1
        self.objects[:] = np.zeros(1, self.objects.dtype)
        self.mem.store32(self.nfree_off, n)
        self.mem.store64(self.head_off, 1)

    # -- addresses ---------------------------------------------------------
    def off(self, ref: int, field: str) -> int:
        """Byte offset of a field of the object `ref` (or a bare slot) names."""
        return self.base + (ref & SLOT_MASK) * self.stride + self.fields[field]

    def address(self, ref: int, field: str) -> int:
        from shm.events import address

        return address(self.seg_index, self.off(ref, field))

    def ref(self, slot: int) -> int:
        """The reference to what is in the slot now (after locking a typesafe object)."""
        return self.mem.load32(self.hdr0 + slot * 32 + 4) << SLOT_BITS | slot

    def nr_free(self) -> int:
        return self.mem.load32(self.nfree_off)

    # -- allocation ----------------------------------------------------------
    def alloc(self, cpu: Cpu) -> int | None:
        """kmem_cache_alloc(): a new reference, or None when the cache is exhausted."""
        slot = self.mem.stack_pop(self.head_off, self._next0, OBJ_HEADER.itemsize)
        if slot < 0:
            return None
        mem, h = self.mem, self.hdr0 + slot * 32
        if mem.cmpxchg32(h, OBJ_FREE, OBJ_ALLOCATED) != OBJ_FREE:
            raise RuntimeError(f"kmem_cache {self.name} corrupted: object {slot} on the free list is not free")
        gen = (mem.fetch_add32(h + 4, 1) + 1) & 0x7FFFFFFF
        mem.store32(h + 12, cpu.id)
        mem.fetch_sub32(self.nfree_off, 1)
        mem.fetch_add32(self.allocs_off, 1)
        cpu.trace(_EV_ALLOC, (1 << 30) | slot)
        return gen << SLOT_BITS | slot

    def free(self, cpu: Cpu, ref: int) -> bool:
        """kmem_cache_free(); a stale or repeated free is a double-free finding."""
        mem, slot = self.mem, ref & SLOT_MASK
        h = self.hdr0 + slot * 32
        now = mem.load32(h + 4)
        if now != ref >> SLOT_BITS or mem.cmpxchg32(h, OBJ_ALLOCATED, OBJ_FREE) != OBJ_ALLOCATED:
            cpu.report(
                SLAB_DOUBLE_FREE,
                f"kmem_cache_free({self.name}) of object {slot} gen {ref >> SLOT_BITS}"
                f" that is {'free' if mem.load32(h) == OBJ_FREE else f'now gen {now}'}",
                **self.describe(ref),
            )
            return False
        mem.store32(h + 16, cpu.id)
        mem.stack_push(self.head_off, self._next0, OBJ_HEADER.itemsize, slot)
        mem.fetch_add32(self.nfree_off, 1)
        cpu.trace(_EV_FREE, (1 << 30) | slot)
        return True

    # -- checks ----------------------------------------------------------------
    def alive(self, ref: int) -> bool:
        """The object `ref` names is allocated and still that generation (no finding if not)."""
        return self.mem.load64(self.hdr0 + (ref & SLOT_MASK) * 32) == (ref >> SLOT_BITS) << 32 | OBJ_ALLOCATED

    def check(self, cpu: Cpu, ref: int, what: str) -> bool:
        """The object is still the one `ref` names (or, typesafe, not free outside RCU)."""
        mem, slot = self.mem, ref & SLOT_MASK
        h = self.hdr0 + slot * 32
        word = mem.load64(h)  # (state, gen): one load, as a page's reference is checked
        state = word & 0xFFFFFFFF
        if self.typesafe_by_rcu:
            if state == OBJ_ALLOCATED or cpu.rcu_depth:
                return True
        elif word == (ref >> SLOT_BITS) << 32 | OBJ_ALLOCATED:
            return True
        cpu.report(
            SLAB_UAF,
            f"{what}: {self.name} object {slot} gen {ref >> SLOT_BITS} is "
            f"{'free' if state == OBJ_FREE else 'reallocated'} (now gen {mem.load32(h + 4)})",
            **self.describe(ref),
        )
        return False

    def load32(self, cpu: Cpu, ref: int, field: str, what: str = "read") -> int:
        """A checked 32-bit load of a field (checked after the load, as KASAN sees the access)."""
        v = self.mem.load32(self.off(ref, field))
        self.check(cpu, ref, f"{what} of {self.name}.{field}")
        return v

    def describe(self, ref: int) -> dict:
        slot = ref & SLOT_MASK
        hd = self.headers[slot]
        return {
            "cache": self.name,
            "slot": int(slot),
            "ref_gen": int(ref >> SLOT_BITS),
            "gen": int(hd["gen"]),
            "state": "allocated" if hd["state"] == OBJ_ALLOCATED else "free",
            "alloc_cpu": int(hd["alloc_cpu"]),
            "free_cpu": int(hd["free_cpu"]),
        }

    def allocated(self) -> np.ndarray:
        return np.flatnonzero(self.headers["state"] != OBJ_FREE)
