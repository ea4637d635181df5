"""The page-frame pool: a struct page array and the pages' contents.

This is the KASAN of the model.  A reference to a page is packed as
``gen << PFN_BITS | pfn``; allocation bumps the page's generation, free
poisons its contents.  The checked accessors compare the reference with the
page: touching a free page, or one whose generation changed since the
reference was taken, is a use-after-free finding; freeing a free page (or
freeing through a stale reference) is a double-free.

Allocation takes gfp flags: GFP_KERNEL may sleep (an invalid-context finding
in atomic context); GFP_NOWAIT never sleeps and fails at the machine's chosen
rate (fault injection), so callers must handle None.  The free list is a
Treiber stack with a tagged head (LIFO: a freed page is the next one handed
out, which is what makes stale references bite).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from shm._atomic import Walker
from shm.checks import POOL_DOUBLE_FREE, POOL_UAF, Check
from shm.events import EV
from shm.layout import Region, field_offsets
from shm.locks import SPINLOCK, WAIT_PAGE, WAIT_SHIFT, Spinlock
from shm.protocols import CpuLike as Cpu
from shm.protocols import MachineLike as Machine
from shm.refcount import Refcount

PFN_BITS = 24
PFN_MASK = (1 << PFN_BITS) - 1
GEN_MASK = (1 << 31) - 1

GFP_NOWAIT = 0
GFP_ATOMIC = 0
GFP_KERNEL = 1

PAGE_FREE = 0
PAGE_ALLOCATED = 1
PAGE_FREEING = 2
PAGE_STATES = {PAGE_FREE: "free", PAGE_ALLOCATED: "allocated", PAGE_FREEING: "being freed"}

POISON_BYTE = 0x6B
POISON64 = int.from_bytes(bytes([POISON_BYTE]) * 8, "little", signed=True)

PAGE = np.dtype(
    [
        ("state", "<i4"),
        ("gen", "<i4"),
        ("flags", "<i4"),
        ("_refcount", "<i4"),
        ("_mapcount", "<i4"),
        ("owner", "<i4"),
        ("alloc_cpu", "<i4"),
        ("free_cpu", "<i4"),
        ("lru_next", "<i4"),
        ("lru_prev", "<i4"),
        ("rcu_next", "<i4"),
        ("rcu_func", "<i4"),
        ("ptl", SPINLOCK),
        ("free_owner", "<i4"),
        ("private", "<i8", (4,)),
        ("pad", "<i8", (5,)),
    ]
)
assert PAGE.itemsize == 128
PAGE_STRIDE = PAGE.itemsize
PAGE_FIELDS = field_offsets(PAGE)
assert PAGE_FIELDS["state"] == 0 and PAGE_FIELDS["gen"] == 4  # (state, gen) is one 64-bit word:
# one load checks a reference, one cmpxchg allocates or frees the page with its generation
_FLAGS, _REFCOUNT, _MAPCOUNT = PAGE_FIELDS["flags"], PAGE_FIELDS["_refcount"], PAGE_FIELDS["_mapcount"]
assert _REFCOUNT == _FLAGS + 4 and PAGE_FIELDS["owner"] == _MAPCOUNT + 4 and _FLAGS % 8 == 0
# so that alloc_page sets (flags, _refcount) and (_mapcount, owner) with one store each


POOL_STATE = np.dtype([("free_head", "<i8"), ("nfree", "<i4"), ("freed", "<i4"), ("waiters", "<i4")])

_SITES: dict[int, str] = {}


def alloc_site(name: str) -> int:
    """Name an allocation site once, at import; leak reports name it."""
    sid = zlib.crc32(name.encode()) & 0x7FFFFFFF
    known = _SITES.get(sid)
    if known and known != name:
        raise ValueError(f"allocation site {name!r} collides with {known!r}")
    _SITES[sid] = name
    return sid


def site_name(sid: int) -> str:
    return _SITES.get(int(sid), f"site#{int(sid)}")


def pfn_of(ref: int) -> int:
    return ref & PFN_MASK


def gen_of(ref: int) -> int:
    return ref >> PFN_BITS


_EV_ALLOC = EV["alloc"]
_EV_FREE = EV["free"]
SITE_UNKNOWN = alloc_site("unknown")


class Pool:
    @staticmethod
    def regions(npages: int, page_size: int) -> list[Region]:
        if page_size % 8 or page_size < 8:
            raise ValueError("page_size must be a positive multiple of 8")
        if not 1 <= npages <= PFN_MASK:
            raise ValueError(f"pool_pages must be between 1 and {PFN_MASK}")
        return [
            Region("pool", POOL_STATE),
            Region("page", PAGE, npages),
            Region("page_data", np.dtype(("u1", (page_size,))), npages),
        ]

    def __init__(self, machine: Machine):
        self.machine = machine
        self.mem = machine.mem
        seg = machine.seg
        lay = seg.layout
        self.npages = lay.regions["page"].count
        self.page_size = lay.regions["page_data"].dtype.itemsize
        self.pages = seg.view("page")
        self.data = seg.view("page_data")
        self.head_off = lay.offset("pool", 0, "free_head")
        self.nfree_off = lay.offset("pool", 0, "nfree")
        self.freed_off = lay.offset("pool", 0, "freed")
        self.waiters_off = lay.offset("pool", 0, "waiters")
        self.page0 = lay.offset("page")
        self.data0 = lay.offset("page_data")
        self._f = PAGE_FIELDS
        self._ptl_field = self._f["ptl"]
        self._next0 = self.page0 + self._f["lru_next"]  # the free list: a Treiber stack of pfns
        self._ptls: list[Spinlock | None] = [None] * self.npages
        self._refs: list[Refcount | None] = [None] * self.npages

    def close(self) -> None:
        del self.pages, self.data

    def init_free_list(self) -> None:
        """All pages free, linked in pfn order (pfn 0 handed out first)."""
        n = self.npages
        self.pages["state"] = PAGE_FREE
        self.pages["lru_next"] = np.arange(1, n + 1, dtype=np.int32)
        self.pages["lru_next"][-1] = -1
        self.pages["owner"] = SITE_UNKNOWN
        self.data[:] = POISON_BYTE
        self.mem.store32(self.nfree_off, n)
        self.mem.store64(self.head_off, 1)

    def field_off(self, pfn: int, field: str) -> int:
        return self.page0 + pfn * PAGE_STRIDE + self._f[field]

    def data_off(self, pfn: int, index: int = 0) -> int:
        return self.data0 + pfn * self.page_size + 8 * index

    def refcount(self, pfn: int) -> Refcount:
        """The page's _refcount as a refcount_t (on every put_page: resolved once per page)."""
        h = self._refs[pfn]
        if h is None:
            h = self._refs[pfn] = self.machine.handle(Refcount, 0, self.field_off(pfn, "_refcount"))
        return h

    def ptl(self, pfn: int) -> Spinlock:
        """The page's split page-table lock (on every fault's path: resolved once per page)."""
        h = self._ptls[pfn]
        if h is None:
            h = self._ptls[pfn] = self.machine.handle(Spinlock, 0, self.page0 + pfn * PAGE_STRIDE + self._ptl_field)
        return h

    def gen(self, pfn: int) -> int:
        return self.mem.load32(self.field_off(pfn, "gen"))

    def ref(self, pfn: int) -> int:
        return (self.gen(pfn) << PFN_BITS) | pfn

    def nr_free(self) -> int:
        return self.mem.load32(self.nfree_off)

    # -- allocation ------------------------------------------------------
    def alloc_page(self, cpu: Cpu, gfp: int, site: int = SITE_UNKNOWN) -> int | None:
        """alloc_page(): a reference to a page with _refcount 1, or None."""
        mem = self.mem
        if gfp & GFP_KERNEL:
            if cpu.preempt_count or cpu.rcu_nesting or cpu.irqs_disabled:  # might_sleep, inlined
                cpu.might_sleep("alloc_page(GFP_KERNEL)")
        else:
            ppm = self.machine.nowait_fail_ppm
            if ppm and cpu.rng.random() * 1_000_000 < ppm:
                return None
        while (pfn := mem.stack_pop(self.head_off, self._next0, PAGE_STRIDE)) < 0:
            if not gfp & GFP_KERNEL or self.machine.stop_requested():
                return None
            self._wait_for_free_page(cpu)
        f = self.page0 + pfn * PAGE_STRIDE
        fo = self._f
        word = mem.load64(f)
        gen = ((word >> 32) + 1) & GEN_MASK
        if word & 0xFFFFFFFF != PAGE_FREE or mem.cmpxchg64(f, word, gen << 32 | PAGE_ALLOCATED) != word:
            raise RuntimeError(f"page pool corrupted: page {pfn} on the free list is not free")
        mem.store64(f + _FLAGS, 1 << 32)  # flags 0, _refcount 1
        mem.store64(f + _MAPCOUNT, site << 32 | 0xFFFFFFFF)  # _mapcount -1, owner
        mem.store32(f + fo["alloc_cpu"], cpu.id)
        mem.fetch_sub32(self.nfree_off, 1)
        cpu.trace(_EV_ALLOC, pfn)
        return (gen << PFN_BITS) | pfn

    def _wait_for_free_page(self, cpu: Cpu) -> None:
        """The pool is empty: sleep until a page is freed, as an allocation waits for reclaim.

        Running out of memory is not a finding.  The grace-period kthread is
        kicked first (RCU callbacks are where deferred frees happen); under the
        controlled scheduler this is a blocking scheduling point, so the
        others run, and only a machine where nothing can free a page is a
        finding (every CPU blocked).  Free-running, a wait that never ends is
        a watchdog stall that names it.  The run's stop request wakes it, and
        the allocation then fails."""
        mem = self.mem
        seq = mem.load32(self.freed_off)
        mem.fetch_add32(self.waiters_off, 1)
        if mem.load64(self.head_off) & 0xFFFFFFFF == 0 and not self.machine.stop_requested():
            self.machine.rcu.kick()
            cpu.hmem.store64(cpu.waiting_off, WAIT_PAGE << WAIT_SHIFT | self.npages)
            cpu.sched.block(cpu, mem, self.freed_off, seq, None)
            cpu.hmem.store64(cpu.waiting_off, 0)
        mem.fetch_sub32(self.waiters_off, 1)

    def wake_waiters(self) -> None:
        """Wake every CPU waiting for a free page (the run is stopping)."""
        self.mem.fetch_add32(self.freed_off, 1)
        self.mem.futex_wake(self.freed_off, -1)

    def free_page(self, cpu: Cpu, ref: int, site: int = SITE_UNKNOWN) -> bool:
        """__free_page() through a reference; a stale or repeated free is a double-free."""
        mem = self.mem
        pfn = ref & PFN_MASK
        gen = ref >> PFN_BITS
        f = self.page0 + pfn * PAGE_STRIDE
        fo = self._f
        old = mem.cmpxchg64(f, gen << 32 | PAGE_ALLOCATED, gen << 32 | PAGE_FREEING)
        if old != gen << 32 | PAGE_ALLOCATED:
            now, state = old >> 32, old & 0xFFFFFFFF
            cpu.report(
                POOL_DOUBLE_FREE,
                f"free of page {pfn} through a stale reference (gen {gen}, page is gen {now})"
                if now != gen
                else f"free of page {pfn} that is {PAGE_STATES.get(state, state)}",
                **self.describe(pfn, expected_gen=gen),
            )
            return False
        mem.fill(self.data0 + pfn * self.page_size, self.page_size, POISON_BYTE)
        mem.store32(f + fo["free_cpu"], cpu.id)
        mem.store32(f + fo["free_owner"], site)
        mem.store32(f, PAGE_FREE)
        mem.stack_push(self.head_off, self._next0, PAGE_STRIDE, pfn)
        mem.fetch_add32(self.nfree_off, 1)
        cpu.trace(_EV_FREE, pfn)
        if mem.load32(self.waiters_off):
            self.wake_waiters()
        return True

    def put_page(self, cpu: Cpu, ref: int, site: int = SITE_UNKNOWN) -> bool:
        """put_page(): drop a reference; the last one frees.  True if freed."""
        return self.release_pages(cpu, (ref,), site) > 0

    def release_pages(self, cpu: Cpu, refs: Iterable[int], site: int = SITE_UNKNOWN) -> int:
        """release_pages() (mm/swap.c): put_page() of each page of a batch, such as the pages an
        mmu_gather collected, in one loop; how many it freed.  A reference to a freed page is a
        use-after-free; a count that goes below zero is refcount_t's underflow."""
        mem, page0 = self.mem, self.page0
        freed = 0
        for ref in refs:
            pfn = ref & PFN_MASK
            f = page0 + pfn * PAGE_STRIDE
            if mem.load64(f) != (ref >> PFN_BITS) << 32 | PAGE_ALLOCATED:
                self._report_uaf(cpu, ref, "put_page")
                continue
            old = mem.fetch_sub32(f + _REFCOUNT, 1)  # Refcount.dec_and_test, inlined
            if old == 1:
                freed += self.free_page(cpu, ref, site)
            elif old <= 0:
                self.refcount(pfn).underflowed(cpu, old)
        return freed

    # -- checked accessors -------------------------------------------------
    def walker(self, shift: int, present: int) -> Walker:
        """Checked walks down tables kept in pool pages whose entries name the next page as
        `entry >> shift` when `entry & present`: each table is checked as alive() checks a
        page, one load for the entry and one for its struct page, as steps of this CPU."""
        return Walker(
            self.mem, self.page0, PAGE_STRIDE, self.data0, self.page_size, PFN_BITS, shift, present, PAGE_ALLOCATED
        )

    def alive(self, ref: int) -> bool:
        """The page behind ref is allocated and still the same generation (no finding if not)."""
        return self.mem.load64(self.page0 + (ref & PFN_MASK) * PAGE_STRIDE) == (ref >> PFN_BITS) << 32 | PAGE_ALLOCATED

    def check(self, cpu: Cpu, ref: int, what: str = "access") -> bool:
        """The page behind ref is allocated and still the same generation."""
        if self.alive(ref):
            return True
        self._report_uaf(cpu, ref, what)
        return False

    def _report_uaf(self, cpu: Cpu, ref: int, what: str, check: Check = POOL_UAF) -> None:
        pfn = ref & PFN_MASK
        gen = ref >> PFN_BITS
        cpu.report(
            check,
            f"{what}: page {pfn} gen {gen} is {PAGE_STATES.get(self.state(pfn), '?')} (now gen {self.gen(pfn)})",
            **self.describe(pfn, expected_gen=gen),
        )

    def read(self, cpu: Cpu, ref: int, index: int, what: str = "read") -> int:
        """A checked 64-bit load of the page's contents (checked after the load)."""
        v = self.mem.load64(self.data_off(ref & PFN_MASK, index))
        self.check(cpu, ref, what)
        return v

    def write(self, cpu: Cpu, ref: int, index: int, value: int, what: str = "write") -> None:
        if self.check(cpu, ref, what):
            self.mem.store64(self.data_off(ref & PFN_MASK, index), value)

    def state(self, pfn: int) -> int:
        return self.mem.load32(self.field_off(pfn, "state"))

    def describe(self, pfn: int, expected_gen: int | None = None) -> dict:
        p = self.pages[pfn]
        d = {
            "pfn": int(pfn),
            "state": PAGE_STATES.get(int(p["state"]), int(p["state"])),
            "gen": int(p["gen"]),
            "alloc_site": site_name(p["owner"]),
            "alloc_cpu": int(p["alloc_cpu"]),
            "refcount": int(p["_refcount"]),
        }
        if int(p["state"]) != PAGE_ALLOCATED:
            d["free_cpu"] = int(p["free_cpu"])
            d["free_site"] = site_name(p["free_owner"])
        if expected_gen is not None:
            d["ref_gen"] = int(expected_gen)
        return d

    # -- sweeps ----------------------------------------------------------
    def allocated(self) -> np.ndarray:
        return np.flatnonzero(self.pages["state"] != PAGE_FREE)

    def owners(self) -> dict[str, int]:
        pfns = self.allocated()
        out: dict[str, int] = {}
        for sid, n in zip(*np.unique(self.pages["owner"][pfns], return_counts=True)):
            out[site_name(sid)] = int(n)
        return out

    def leaks(self) -> list[dict]:
        """Pages still allocated, grouped by allocation site (loom names the site too)."""
        pfns = self.allocated()
        groups: dict[int, list[int]] = {}
        for pfn in pfns:
            groups.setdefault(int(self.pages["owner"][pfn]), []).append(int(pfn))
        return [
            {
                "site": site_name(sid),
                "pages": len(ps),
                "pfns": ps[:16],
                "alloc_cpus": sorted({int(self.pages["alloc_cpu"][p]) for p in ps}),
            }
            for sid, ps in sorted(groups.items(), key=lambda kv: -len(kv[1]))
        ]
