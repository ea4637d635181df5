"""speculative: Dufour's SPF (2020-02-07), a lockless lookup validated again under the ptl.

The fault holds neither mmap_lock nor anything that keeps page tables, and
munmap frees them: the walk runs with interrupts off, a missing table makes
it fall back, and the ptl is taken by trylock (FAULT_FLAG_SPECULATIVE in the
model)."""

from __future__ import annotations

from policies.mm import (
    FAULT_FLAG_SPECULATIVE,
    VM_FAULT_RETRY,
    Vmf,
    broken,
)
from policies.mm.checks import (
    PTE_AFTER_ZAP,
    WALK_FREED_TABLE,
)
from policies.scenario import World, mutant
from policies.vma_lookup.common import VmaPolicy, new_vma_plain, vm_area_free_rcu
from policies.vma_lookup.mmap_lock import (
    fault_mmap_lock,
    lookup_mmap_lock,
    mmap_locked,
    mmap_write_downgrade_plain,
    mmap_write_unlock_plain,
    munmap_locked,
    release_mmap_lock,
)
from policies.vma_lookup.rcu_vma_refcount import vma_get


def spf_validate(w: World, seq: int):
    def validate(vmf: Vmf) -> bool:
        if w.mm.vma_field(w.cpu, vmf.vma, "vm_seq", "spf: validate the VMA under the ptl") == seq:
            return True
        w.count("spf_bail")
        return False

    return validate


def _spf_fault(w: World, mm: int, vpn: int, write: bool, *, validate: bool) -> int:
    """The speculative path: lockless lookup, a reference, the VMA's sequence sampled;
    validated under the ptl before set_pte_at (Zijlstra, 2020-02-07: "verify the vma (again)
    and install the PTE. If anything goes wrong, we bail").  Falls back to mmap_lock."""
    m, cpu, rcu = w.mm, w.cpu, w.rcu
    rcu.read_lock(cpu)
    vma = m.vma_lookup(cpu, mm, vpn)
    got = bool(vma) and vma_get(w, vma)
    seq = w.mem.load32(m.vma_off(vma, "vm_seq")) if got else 1
    rcu.read_unlock(cpu)
    if got and not seq & 1 and (not write or w.mem.load32(m.vma_off(vma, "anon_vma"))):
        vmf = Vmf(
            mm,
            vma,
            vpn,
            write,
            "speculative",
            validate=spf_validate(w, seq) if validate else None,
            flags=FAULT_FLAG_SPECULATIVE,
        )
        cpu.window("spf:after-lookup")
        ret = m.handle_mm_fault(cpu, vmf)
        vma_put_spf(w, vma)
        if ret != VM_FAULT_RETRY:
            w.count("spf")
            return ret
    elif got:
        vma_put_spf(w, vma)
    w.count("fallbacks")
    return fault_mmap_lock(w, mm, vpn, write)


def spf_fault(w: World, mm: int, vpn: int, write: bool) -> int:
    return _spf_fault(w, mm, vpn, write, validate=True)


def spf_fault_no_revalidate(w: World, mm: int, vpn: int, write: bool) -> int:
    """DELIBERATELY BROKEN: the speculative fault installs its PTE without validating the VMA
    under the ptl (Babka, 2019-12-10: the fault that started with the old VMA must not be the
    last to install a PTE for it).  Must trip mm.pte-after-zap."""
    return _spf_fault(w, mm, vpn, write, validate=False)


def vma_put_spf(w: World, vma: int) -> None:
    m = w.mm
    if m.vma_cache.check(w.cpu, vma, "vma_put") and m.vma_refcount(vma).dec_and_test(w.cpu):
        w.rcu.call(w.cpu, vm_area_free_rcu, vma)


def spf_before_unmap(w: World, mm: int, vma: int) -> None:
    """vm_write_begin(): a speculative fault that sampled the sequence before now will bail."""
    w.mem.fetch_add32(w.mm.vma_off(vma, "vm_seq"), 1)


def spf_fork_begin(w: World, mm: int, vma: int) -> None:
    """fork: vm_write_begin() on the parent's VMA, so a speculative fault that sampled its
    sequence before fails its validation under the ptl while the VMA is copied."""
    w.mem.fetch_add32(w.mm.vma_off(vma, "vm_seq"), 1)


def spf_fork_end(w: World, mm: int, vma: int) -> None:
    """vm_write_end() once fork flushed: speculative faults may run on the VMA again."""
    w.mem.fetch_add32(w.mm.vma_off(vma, "vm_seq"), 1)


def spf_vma_free(cpu, vma: int) -> None:
    vma_put_spf(cpu.ctx, vma)


speculative = VmaPolicy(
    "speculative",
    doc="Dufour's SPF: lockless lookup, VMA seqcount validated under the ptl, mmap_lock fallback",
    lookup=lookup_mmap_lock,
    release=release_mmap_lock,
    fault=spf_fault,
    mmap=mmap_locked,
    munmap=munmap_locked,
    new_vma=new_vma_plain,
    before_unmap=spf_before_unmap,
    dup_lock_vma=spf_fork_begin,
    dup_unlock_vma=spf_fork_end,
    write_unlock=mmap_write_unlock_plain,
    write_downgrade=mmap_write_downgrade_plain,
    vma_free=spf_vma_free,
)


MUTANTS = (
    mutant(
        speculative,
        "no_revalidate",
        PTE_AFTER_ZAP,
        "Babka 2019-12-10: 'a parallel fault that started with the old VMA ... doesn't end up being the "
        "last to install the PTE for the VMA that's going away'",
        "the speculative fault installs the PTE without validating the VMA under the ptl",
        "spf_bail",
        fault=spf_fault_no_revalidate,
    ),
    mutant(
        speculative,
        "spf_walk_irqs_on",
        WALK_FREED_TABLE,
        "Dufour, SPF: handle_speculative_fault walks the page tables with interrupts disabled, so that "
        "free_pgtables' IPI waits for it",
        "the speculative fault walks the page tables with interrupts on",
        "spf_walk_unhooked",
        model=broken.SpfWalksWithIrqsOn,
    ),
)
