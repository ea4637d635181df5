"""struct vm_fault, and how a fault reaches and locks its PTE: the speculative walk,
pte_map_lock, and the checks just before set_pte_at.

Every function takes the VMA as the caller found and pinned it (a `Vmf`): how
it was found (mmap_lock, RCU and a refcount, SRCU, a seqcount, a per-VMA
lock) is the mechanism under test, and lives in the mechanism's module.  A
mechanism that must revalidate before installing a PTE (the speculative
fault) gives the Vmf a `validate` callback that runs under the ptl.

The model's WARN_ONs, checked just before set_pte_at: a fault installs a PTE
for a VMA that munmap has already zapped, every table of it (the PTE would
outlive its VMA: Vlastimil, 2019-12-10, "a parallel fault that started with
the old VMA ... doesn't end up being the last to install the PTE for the VMA
that's going away"); a fault installs a PTE outside its VMA, or for a VMA of
another mm.
"""

from __future__ import annotations

from policies.mm.checks import LOST_WRITE, PTE_AFTER_ZAP, PTE_OUTSIDE_VMA
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT
from policies.mm.rmap import ANON_SITE, LAST_WRITER, stamp
from policies.mm.swap import Swap
from policies.mm.vma import VM_ZAPPED, VMA
from shm import GFP_KERNEL
from shm.layout import field_offsets
from shm.pool import PAGE_STRIDE, PFN_MASK
from shm.slab import SLOT_MASK

_VMA_FIELDS = field_offsets(VMA)
_VM_START = _VMA_FIELDS["vm_start"]
_VM_END, _VM_FLAGS, _VM_MM, _ZAP_START, _ZAP_END = (
    _VMA_FIELDS[f] - _VM_START for f in ("vm_end", "vm_flags", "vm_mm", "zap_start", "zap_end")
)
assert VMA.itemsize % 8 == 0 and _VM_START % 8 == 0 and _VM_END == 4 and _VM_FLAGS % 8 == 0 and _VM_MM == _VM_FLAGS + 4

VM_FAULT_OK = 0
VM_FAULT_RETRY = 1
VM_FAULT_SIGSEGV = 2
VM_FAULT_OOM = 3
FAULT_RESULTS = ("ok", "retry", "sigsegv", "oom")


FAULT_FLAG_SPECULATIVE = 0x1
FAULT_FLAG_UNSHARE = 0x2
FAULT_FLAG_PTE_GET = 0x4


class Vmf:
    """struct vm_fault: the VMA as the mechanism pinned it, and what to check before installing.

    FAULT_FLAG_SPECULATIVE (Dufour's SPF) is a fault that holds neither
    mmap_lock nor anything that keeps page tables: it walks them with
    interrupts off and takes the ptl by trylock (spf_walk, pte_map_lock).
    FAULT_FLAG_UNSHARE (c89357e27f20, "mm: support GUP-triggered unsharing
    of anonymous pages") is GUP asking for an exclusive page where a R/O pin
    would otherwise pin one that fork shares: do_wp_page without the write.
    FAULT_FLAG_PTE_GET (the pte_ref seed): the fault holds a reference on its
    PTE table, which pte_put_vmf drops."""

    __slots__ = ("mm", "vma", "vpn", "write", "validate", "how", "token", "pmd", "orig_pmd", "flags", "table")

    def __init__(
        self, mm: int, vma: int, vpn: int, write: bool, how: str = "", token=None, validate=None, flags: int = 0
    ):
        self.mm, self.vma, self.vpn, self.write = mm, vma, vpn, write
        self.how, self.token, self.validate, self.flags = how, token, validate, flags
        self.pmd: tuple[int, int] | None = None
        self.orig_pmd = 0
        self.table = 0  # the PTE table the fault holds a reference on (FAULT_FLAG_PTE_GET)


class VmFault(Swap):
    """What every fault path shares: the checks before set_pte_at, the speculative walk and
    pte_map_lock, a new anonymous page."""

    def _may_install(self, cpu, vmf: Vmf) -> bool:
        """Under the ptl, just before set_pte_at: the mechanism's check, then the model's."""
        if vmf.validate is not None and not vmf.validate(vmf):
            return False
        vma = vmf.vma
        c = self.vma_cache
        mem = self.mm_mem
        base = c.base + (vma & SLOT_MASK) * c.stride + _VM_START
        mm_flags = mem.load64(base + _VM_FLAGS)  # the model's own look: each pair in one load
        flags, vm_mm = mm_flags & 0xFFFFFFFF, mm_flags >> 32
        span = mem.load64(base)
        s, e = span & 0xFFFFFFFF, span >> 32
        if not c.check(cpu, vma, "set_pte_at: the fault's VMA"):
            return False
        if flags & VM_ZAPPED and mem.load32(base + _ZAP_START) <= vmf.vpn < mem.load32(base + _ZAP_END):
            cpu.report(
                PTE_AFTER_ZAP,
                f"fault installs a PTE at {vmf.vpn} for VMA {self._vma_text(vma)} after "
                "munmap zapped it: the PTE outlives its VMA (a parallel fault that started with the "
                "old VMA ended up the last to install the PTE)",
                mm=vmf.mm,
                vpn=vmf.vpn,
                **self.vma_describe(vma),
            )
            return False
        if not s <= vmf.vpn < e or vm_mm != self.mm_id(vmf.mm):
            cpu.report(
                PTE_OUTSIDE_VMA,
                f"fault installs a PTE at {vmf.vpn} of mm {vmf.mm} through VMA "
                f"[{s}, {e}) of mm id {vm_mm}: the VMA it holds is not the one that covers the "
                "address (was the slot reused?)",
                mm=vmf.mm,
                vpn=vmf.vpn,
                **self.vma_describe(vma),
            )
            return False
        return True

    def _vma_text(self, vma: int) -> str:
        d = self.vma_describe(vma)
        return f"{d['vma']} ({d.get('vm_flags', '')})"

    def spf_walk(self, cpu, vmf: Vmf) -> int:
        """handle_speculative_fault's walk to the PTE (Dufour, "Speculative page faults"): with
        interrupts off, so that free_pgtables' IPI waits for it; a missing table is not
        allocated speculatively.  The PTE, or -1 to fall back to mmap_lock."""
        cpu.local_irq_disable()
        try:
            return self._spf_walk(cpu, vmf)
        finally:
            cpu.local_irq_enable()

    def _spf_walk(self, cpu, vmf: Vmf) -> int:
        pmd, mi = self.walk_pmd(cpu, vmf.mm, vmf.vpn, "spf: walk")
        if not pmd:
            return -1
        e = self.read_entry(cpu, pmd, mi, "spf: pmd")
        if not e & PTE_PRESENT:
            self.count("spf_no_table")
            return -1
        cpu.window("spf:between-pmd-and-pte")
        pte = self.read_entry(cpu, e >> FLAG_BITS, vmf.vpn % self.geometry.pte, "spf: pte")
        if self.page_mem.load64(self.table_off(pmd, mi)) != e:
            self.count("spf_walk_unhooked")  # the walk is in a table free_pgtables unhooked
        vmf.pmd, vmf.orig_pmd = (pmd, mi), e
        return pte

    def pte_map_lock(self, cpu, vmf: Vmf):
        """The fault's PTE table and ptl, locked; (0, None): retry (or fall back, if speculative).

        A speculative fault (Dufour's pte_map_lock) disables interrupts,
        checks that its VMA did not change (so a munmap that starts after
        that waits for it in free_pgtables' IPI), that the pmd still holds
        the table it walked, and takes the ptl by trylock: spinning on it
        with interrupts off could deadlock against a holder that waits for
        this CPU's IPI."""
        if not vmf.flags & FAULT_FLAG_SPECULATIVE:
            return self.pte_offset_map_lock(cpu, vmf.mm, vmf.vpn, vmf.pmd)
        assert vmf.pmd is not None
        cpu.local_irq_disable()
        try:
            if vmf.validate is not None and not vmf.validate(vmf):
                return 0, None
            pmd, mi = vmf.pmd
            if self.read_entry(cpu, pmd, mi, "pte_map_lock") != vmf.orig_pmd:
                return 0, None
            ptl = self.pte_lockptr(cpu, vmf.orig_pmd >> FLAG_BITS)
            if not ptl.trylock(cpu):
                self.count("spf_ptl_busy")
                return 0, None
            return vmf.orig_pmd >> FLAG_BITS, ptl
        finally:
            cpu.local_irq_enable()

    def _new_anon_page(self, cpu, vmf: Vmf, gfp: int = GFP_KERNEL) -> tuple[int | None, int]:
        anon = self.anon_vma_prepare(cpu, vmf.mm, vmf.vma)
        page = self.pool.alloc_page(cpu, gfp, ANON_SITE)
        if page is not None:
            data = self.pool_data0 + (page & PFN_MASK) * self.page_size
            self.page_mem.store64(data, stamp(anon, vmf.vpn))
            self.page_mem.store64(data + 8, 0)
            self.page_mem.store64(self.page0 + (page & PFN_MASK) * PAGE_STRIDE + LAST_WRITER, 0)
        return page, anon

    def _back_out(self, cpu, ptl, page: int | None, ret: int) -> int:
        """Under the ptl, the fault will not install: unlock, give its new page back, return `ret`."""
        ptl.unlock(cpu)
        self._drop_new(cpu, page)
        return ret

    def _drop_new(self, cpu, page: int | None) -> None:
        if page is not None:
            self.pool.free_page(cpu, page, ANON_SITE)

    def check_lost_write(self, cpu, old: int, copy: int, vmf: Vmf, what: str) -> None:
        """After the flush, before the copy is mapped: a write that reached the old page since the
        copy was taken is lost to this mm (its TLB entry outlived the PTE)."""
        writes = self.page_mem.load64(self.pool.data_off(copy & PFN_MASK, 1))
        if (now := self.pool.read(cpu, old, 1, f"{what}: after the flush")) != writes:
            cpu.report(
                LOST_WRITE,
                f"{what}: {now - writes} write(s) landed in page {old & PFN_MASK} after it was copied "
                f"for vpn {vmf.vpn} of mm {vmf.mm}: the mm now maps the copy, which lacks them (a "
                "writable TLB entry outlived the PTE)",
                mm=vmf.mm,
                vpn=vmf.vpn,
                **self.pool.describe(old & PFN_MASK),
            )
