"""Long-term GUP pins on one CPU: PageAnonExclusive, FOLL_PIN's bias, unshare, fork's copy of a
pinned page, and the check a driver's release runs (each broken twin proven by its mutant)."""

from __future__ import annotations

from policies.mm import FOLL_GET, FOLL_LONGTERM, FOLL_PIN, FOLL_WRITE
from policies.mm.pgtable import PTE_WRITE
from policies.mm.rmap import GUP_PIN_COUNTING_BIAS
from policies.vma_lookup.scenario import dup_mmap, get_user_pages
from shm.pool import PFN_MASK
from tests.policies.mmworld import checks, counter, pte_at, quiet, touch

RO_PIN = FOLL_PIN | FOLL_LONGTERM


def _pin(w, vpn: int, gup_flags: int) -> int:
    """A driver pins vpn of mm 0 and keeps it (op_pin's slow path); the page."""
    unmaps = w.mm.pinned_unmaps(0, vpn)
    ref = get_user_pages(w, 0, vpn, gup_flags)
    assert ref
    w.mm.keep_pin(w.cpu, 0, vpn, ref, gup_flags, unmaps)
    return ref


def _child_pte(w, child: int, vpn: int) -> int:
    table = w.mm.walk_pte_table(w.cpu, child, vpn, "test")
    return w.mm.read_entry(w.cpu, table, vpn % w.mm.geometry.pte, "test")


def _refcount(w, ref: int) -> int:
    return w.mm.page_mem.load32(w.mm._page_word(ref, "_refcount"))


def _release(w) -> list[str]:
    w.mm.release_pin(w.cpu, w.cpu.id)
    return quiet(w)


def test_a_new_anonymous_page_is_exclusive_and_fork_shares_it_no_longer(world):
    w = world
    touch(w, 3)
    ref = pte_at(w, 3) >> 8
    assert w.mm.page_anon_exclusive(ref)
    assert dup_mmap(w, 0) > 0
    assert not w.mm.page_anon_exclusive(ref) and not pte_at(w, 3) & PTE_WRITE
    assert checks(w) == []


def test_foll_pin_adds_the_bias_and_its_unpin_takes_it_back(world):
    w = world
    touch(w, 3)
    ref = _pin(w, 3, RO_PIN | FOLL_WRITE)
    assert _refcount(w, ref) == 1 + GUP_PIN_COUNTING_BIAS and w.mm.folio_maybe_dma_pinned(ref)
    assert _release(w) == []
    assert _refcount(w, ref) == 1


def test_fork_copies_a_pinned_page_for_the_child_and_the_parent_keeps_it(world):
    """70e806e4e645: the pinned page stays the parent's, writable as it was; the child gets a copy
    with the same contents."""
    w = world
    touch(w, 3)
    ref = _pin(w, 3, RO_PIN)
    child = dup_mmap(w, 0)
    assert child > 0 and counter(w, "fork_pinned_copies") == 1
    assert pte_at(w, 3) >> 8 == ref and pte_at(w, 3) & PTE_WRITE and w.mm.page_anon_exclusive(ref)
    centry = _child_pte(w, child, 3)
    assert centry >> 8 != ref and w.pool.read(w.cpu, centry >> 8, 1) == w.pool.read(w.cpu, ref, 1)
    assert _release(w) == []


def test_a_read_only_pin_of_a_shared_page_unshares_it_first(world):
    """a7f226604170: the pin gets an exclusive copy mapped read-only; the child keeps the old page,
    and the parent's write reuses the pinned one (PageAnonExclusive, whatever its count)."""
    w = world
    touch(w, 3)
    old = pte_at(w, 3) >> 8
    child = dup_mmap(w, 0)
    assert child > 0
    ref = _pin(w, 3, RO_PIN)
    assert counter(w, "gup_unshares") == 1 and _child_pte(w, child, 3) >> 8 == old
    assert ref & PFN_MASK != old & PFN_MASK and w.mm.page_anon_exclusive(ref)
    assert pte_at(w, 3) >> 8 == ref and not pte_at(w, 3) & PTE_WRITE
    touch(w, 3)
    assert counter(w, "pinned_reuses") == 1 and pte_at(w, 3) >> 8 == ref and pte_at(w, 3) & PTE_WRITE
    assert _release(w) == []


def test_a_read_only_pin_of_the_zero_page_gets_an_exclusive_page(world):
    w = world
    touch(w, 3, write=False)
    assert pte_at(w, 3) >> 8 == w.mm.zero_page
    ref = _pin(w, 3, RO_PIN)
    assert ref != w.mm.zero_page and w.mm.page_anon_exclusive(ref) and not pte_at(w, 3) & PTE_WRITE
    assert _release(w) == []


def test_a_vmsplice_reference_does_not_stop_fork_from_sharing(world):
    """FOLL_GET is no pin: fork shares the page; the writer copies it and the pipe keeps the old."""
    w = world
    touch(w, 3)
    ref = _pin(w, 3, FOLL_GET)
    child = dup_mmap(w, 0)
    assert child > 0 and counter(w, "fork_pinned_copies") == 0 and _child_pte(w, child, 3) >> 8 == ref
    touch(w, 3)
    assert pte_at(w, 3) >> 8 != ref and _child_pte(w, child, 3) >> 8 == ref
    assert _release(w) == []


def test_a_pin_whose_page_the_process_unmapped_is_no_finding(world):
    w = world
    touch(w, 3)
    ref = _pin(w, 3, RO_PIN | FOLL_WRITE)
    w.mm.madvise_dontneed(w.cpu, 0, 3, 4)
    touch(w, 3)
    assert pte_at(w, 3) >> 8 != ref
    assert _release(w) == []


def test_a_pin_the_process_was_copied_off_is_a_finding(world):
    """What mm.pin-diverged sees: the process maps another page where it pinned one, and never
    unmapped it (here the copy-on-write is done by hand: the broken twins do it in the model)."""
    w = world
    touch(w, 3)
    _pin(w, 3, RO_PIN | FOLL_WRITE)
    w.mm.clear_page_anon_exclusive(pte_at(w, 3) >> 8)
    off = w.mm.table_off(w.mm.walk_pte_table(w.cpu, 0, 3, "test"), 3 % w.mm.geometry.pte)
    w.mm.page_mem.store64(off, pte_at(w, 3) & ~PTE_WRITE)
    w.mm.flush_tlb_mm(w.cpu, 0)
    w.mm.page_dup_rmap(w.cpu, pte_at(w, 3) >> 8)  # as if another mm shared it: the write copies
    touch(w, 3)
    w.mm.release_pin(w.cpu, w.cpu.id)
    assert checks(w) == ["mm.pin-diverged"]
