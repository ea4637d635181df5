"""The quiescent sweep of the mm model, at a stop-the-world point (its checks: checks.py)."""

from __future__ import annotations

import numpy as np

from policies.mm.base import MM_EXITED, MM_LIVE
from policies.mm.checks import (
    BAD_PAGE_REFS,
    BAD_PGTABLE_BYTES,
    BAD_RSS,
    MAPS_FREED_TABLE,
    PTE_IN_NO_VMA,
    STUCK_MIGRATION,
    SWAP_COUNT,
)
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT, PTE_SPECIAL, describe_entry, is_migration_entry, swp_offset
from policies.mm.vma import RESERVED
from shm.checks import POOL_LEAK, SLAB_LEAK
from shm.pool import PAGE_ALLOCATED, PAGE_STATES, PFN_BITS, PFN_MASK
from shm.slab import SLOT_MASK


def _entries(model, ref: int, n: int) -> np.ndarray:
    words = model.pool.data.view("<i8")
    return words[ref & PFN_MASK, :n]


def _live_table(model, cpu, mm: int, ref: int, where: str) -> bool:
    """The table an upper-level entry names is allocated and the same generation; else a finding."""
    pages, pfn = model.pool.pages, ref & PFN_MASK
    if int(pages["state"][pfn]) == PAGE_ALLOCATED and int(pages["gen"][pfn]) == ref >> PFN_BITS:
        return True
    cpu.report(
        MAPS_FREED_TABLE,
        f"mm {mm}: {where} names page {pfn} gen {ref >> PFN_BITS}, which is "
        f"{PAGE_STATES.get(int(pages['state'][pfn]), '?')} (now gen {int(pages['gen'][pfn])})",
        mm=mm,
        **model.pool.describe(pfn, expected_gen=ref >> PFN_BITS),
    )
    return False


def sweep(model, cpu) -> None:
    """Report every broken invariant of the quiescent model through cpu.report (first few of each);
    then the mechanism's checks of the live PTE tables (the model's sweep_tables)."""
    g = model.geometry
    pool = model.pool
    mapped: dict[int, int] = {}
    owned: set[int] = set()
    live_vmas: set[int] = set()
    live_index: set[int] = set()
    if model.zero_page:
        owned.add(model.zero_page & PFN_MASK)
    reported = 0
    slot_refs = np.zeros(model.swap_slots, dtype=np.int64)
    live_tables: list[tuple[int, int, int, int]] = []  # (PTE table, pmd table, pmd index, mm)
    for mm in model.live_mms():
        entries = model.index_entries(mm)
        idx = int(model.mm_mem.load64(model.mm_off(mm, "index")))
        if idx:
            live_index.add(idx & SLOT_MASK)
        live_vmas.update(v & SLOT_MASK for _, _, v in entries if v != RESERVED)
        covered = np.zeros(g.pages, dtype=bool)
        for s, e, v in entries:
            if v != RESERVED:
                covered[s:e] = True
        pgd = int(model.mm_mem.load64(model.mm_off(mm, "pgd")))
        if not pgd:
            continue
        owned.add(pgd & PFN_MASK)
        rss = tables = swapents = 0
        for gi, pe in enumerate(_entries(model, pgd, g.pgd)):
            if not pe & PTE_PRESENT:
                continue
            pmd = int(pe) >> FLAG_BITS
            if not _live_table(model, cpu, mm, pmd, f"pgd entry {gi}"):
                continue
            owned.add(pmd & PFN_MASK)
            tables += 1
            for mi, me in enumerate(_entries(model, pmd, g.pmd)):
                if not me & PTE_PRESENT:
                    continue
                table = int(me) >> FLAG_BITS
                if not _live_table(model, cpu, mm, table, f"pmd entry {mi} of pgd entry {gi}"):
                    continue
                owned.add(table & PFN_MASK)
                live_tables.append((table, pmd, mi, mm))
                tables += 1
                base = gi * g.pmd_span + mi * g.pte
                for k, pte in enumerate(_entries(model, table, g.pte)):
                    pte = int(pte)
                    if not pte:
                        continue
                    vpn = base + k
                    if not pte & PTE_PRESENT:
                        if is_migration_entry(pte):
                            cpu.report(
                                STUCK_MIGRATION,
                                f"mm {mm}: vpn {vpn} still holds a {describe_entry(pte)} with no migration in flight",
                                mm=mm,
                                vpn=vpn,
                            )
                            rss += 1  # it counts in MM_ANONPAGES, as its page did
                            continue
                        slot_refs[swp_offset(pte)] += 1
                        swapents += 1
                        continue
                    if not covered[vpn] and reported < 4:
                        reported += 1
                        cpu.report(
                            PTE_IN_NO_VMA,
                            f"mm {mm}: present PTE at vpn {vpn} lies in no VMA ({describe_entry(pte)})",
                            mm=mm,
                            vpn=vpn,
                        )
                    if pte & PTE_SPECIAL:
                        continue
                    pfn = (pte >> FLAG_BITS) & PFN_MASK
                    mapped[pfn] = mapped.get(pfn, 0) + 1
                    rss += 1
        want_swap = int(model.mm_mem.load64(model.mm_off(mm, "swapents")))
        if want_swap != swapents:
            cpu.report(
                BAD_RSS,
                f"mm {mm}: MM_SWAPENTS says {want_swap}, the page tables hold {swapents} swap entries",
                mm=mm,
                swapents=want_swap,
                entries=swapents,
            )
        want_rss = int(model.mm_mem.load64(model.mm_off(mm, "rss")))
        if want_rss != rss:
            cpu.report(
                BAD_RSS,
                f"mm {mm}: RSS counter says {want_rss}, the page tables map {rss} pages",
                mm=mm,
                rss=want_rss,
                mapped=rss,
            )
        bytes_ = int(model.mm_mem.load64(model.mm_off(mm, "pgtable_bytes")))
        if bytes_ != tables * model.page_size:
            cpu.report(
                BAD_PGTABLE_BYTES,
                f"mm {mm}: pgtable_bytes is {bytes_}, the mm holds {tables} tables ({tables * model.page_size} bytes)",
                mm=mm,
            )
    check_swap_map(model, cpu, slot_refs)
    model.sweep_tables(cpu, np.array(live_tables, dtype=np.int64).reshape(-1, 4))
    pages = pool.pages
    for pfn, n in sorted(mapped.items()):
        owned.add(pfn)
        mc, rc = int(pages["_mapcount"][pfn]) + 1, int(pages["_refcount"][pfn])
        if mc != n or rc != n:
            cpu.report(
                BAD_PAGE_REFS,
                f"page {pfn}: mapped {n} times, but _mapcount+1 = {mc} and _refcount = {rc}",
                **pool.describe(pfn),
            )
            break
    for pfn in pool.allocated():
        if int(pfn) not in owned:
            cpu.report(
                POOL_LEAK,
                f"page {int(pfn)} is allocated but no page table, mapping or mm refers to it",
                **pool.describe(int(pfn)),
            )
            break
    for cache, live in ((model.vma_cache, live_vmas), (model.index_cache, live_index)):
        stray = [int(s) for s in cache.allocated() if int(s) not in live]
        if stray:
            cpu.report(
                SLAB_LEAK, f"{len(stray)} {cache.name} object(s) allocated that no live mm refers to", slots=stray[:16]
            )


def census(model) -> dict[str, int]:
    """What the live mms' page tables hold, read with numpy from outside the run (no lock, no
    scheduling point): pgtable_bytes as the mms count it, the PTE tables their pmds map, and
    how many of those map nothing (the pte_ref seed's cost: tables MADV_DONTNEED emptied).
    Read while CPUs run, an entry may name a table freed meanwhile; it is counted as read."""
    g, pool = model.geometry, model.pool
    words = pool.data.view("<i8")
    mms = model.mms
    live = np.flatnonzero((mms["state"] == MM_LIVE) | (mms["state"] == MM_EXITED))
    pgds = mms["pgd"][live]
    pgds = pgds[pgds != 0] & PFN_MASK
    pmds = _tables_named(words[pgds, : g.pgd], pool.npages)
    ptes = _tables_named(words[pmds, : g.pmd], pool.npages)
    empty = int(np.count_nonzero(~words[ptes, : g.pte].any(axis=1))) if len(ptes) else 0
    return {
        "pgtable_bytes": int(mms["pgtable_bytes"][live].sum()),
        "pte_tables": len(ptes),
        "empty_pte_tables": empty,
    }


def _tables_named(entries: np.ndarray, npages: int) -> np.ndarray:
    """The pfns the present entries of a block of upper-level entries name."""
    e = entries[(entries & PTE_PRESENT) != 0]
    pfns = (e >> FLAG_BITS) & PFN_MASK
    return pfns[pfns < npages]


def check_swap_map(model, cpu, slot_refs: np.ndarray) -> None:
    """Each swap slot's count is the number of swap entries that name it (all mms exited: none)."""
    counts = model.swap_slots_used()
    bad = np.flatnonzero(counts != slot_refs)
    if len(bad):
        slot = int(bad[0])
        cpu.report(
            SWAP_COUNT,
            f"swap slot {slot}: count {int(counts[slot])}, named by {int(slot_refs[slot])} swap entries"
            f" ({len(bad)} slot(s) wrong)",
            slot=slot,
        )
