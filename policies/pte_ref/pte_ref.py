"""pte_ref: the seed (Qi Zheng, "[PATCH v3 14/15] Documentation: add document for pte_ref",
linux-mm, 2021-11-10).  A PTE table is freed as soon as nothing uses it.

struct page of a PTE table gains two fields (section 2): `pmd`, the pmd entry
that maps the table, and `pte_refcount`, how many use it.  The users are every
entry that is not none (present, swap, migration) and every visitor (a page
table walker, a fault, a zap, slow GUP).  When the count drops to 0 the table
is unhooked under the pmd lock, the TLB is flushed, and the table is freed
(free_user_pte_table).  The flush is an IPI, which a CPU walking with
interrupts off (fast GUP) does not take until its walk is done (section 3's
last diagram).

The seed is v3's documentation (14/15); the code follows the series where
the document draws it, and v2 where v3 relies on what the document does not
draw.  pte_try_get takes the pmd lock, as v2 did: the table a pmd maps under
that lock is not freed yet, because the free unhooks it under the same lock
first (v3 took rcu_read_lock, safe only with tables freed by RCU, which 15/15
brought through the mmu_gather).  free_user_pte_table frees each table as
section 3's last diagram does, unhooked, flushed and freed at once, and as v2
flushes after dropping the pmd lock.  pte_refcount is the series' atomic_t
modelled as a refcount_t, so that an increment from 0 is seen where the
atomic_t would go on silently into a use-after-free.

Its broken twins, each named after the passage it breaks:
- the "/* broken!! */" walker that maps a table without pte_try_get;
- pte_get where pte_get_unless_zero is needed;
- the table freed before the TLB invalidation;
- a zap that forgets its pte_put;
- a back-pointer that names the wrong pmd entry (made up).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from policies.mm import MmModel
from policies.mm.checks import WALK_FREED_TABLE
from policies.mm.mmu_gather import MmuGather
from policies.mm.pgtable import FLAG_BITS, PTE_PRESENT
from policies.mm.vmf import FAULT_FLAG_PTE_GET
from policies.scenario import mutant
from policies.vma_lookup.mmap_lock import mmap_lock
from shm import Refcount
from shm.checks import REFCOUNT_INC_ON_ZERO, define_check
from shm.pool import PFN_MASK

PTE_REFCOUNT = define_check(
    "pte_ref.refcount",
    "refcount",
    "quiescent: a PTE table's pte_refcount differs from its entries that are not none (every visitor has "
    "gone): a get or a put was lost, so the table is never freed, or is freed while it still maps",
)
PMD_BACKPOINTER = define_check(
    "pte_ref.pmd-backpointer",
    "invariant",
    "a PTE table's page->pmd does not name the pmd entry that maps it: at pte_refcount 0, "
    "free_user_pte_table would unhook whatever that entry maps",
)

_PMD_WORD, _COUNT_WORD = 1, 2  # page->private[1]: the pmd back-pointer; [2]: pte_refcount


class PteRefModel(MmModel):
    """The model with CONFIG_FREE_USER_PTE: the seed's twelve helpers (section 4), and
    free_user_pte_table at zero."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._counts: dict[int, Refcount] = {}

    def pte_refcount(self, table: int) -> Refcount:
        """page->pte_refcount of a PTE table, as a refcount_t (pte_get from 0 is reported)."""
        pfn = table & PFN_MASK
        h = self._counts.get(pfn)
        if h is None:
            off = self.pool.field_off(pfn, "private") + 8 * _COUNT_WORD
            h = self._counts[pfn] = self.machine.handle(Refcount, 0, off)
        return h

    def _pmd_word(self, table: int) -> int:
        return self.pool.field_off(table & PFN_MASK, "private") + 8 * _PMD_WORD

    # -- section 4, the helpers ---------------------------------------------------------
    def pte_ref_init(self, cpu, table: int, pmd: tuple[int, int], count: int) -> None:
        """pte_ref_init(): a new table's pmd and pte_refcount (the installer's reference: 1)."""
        self.pte_update_pmd(table, pmd)
        self.pte_refcount(table).set(count)

    def pte_to_pmd(self, table: int) -> tuple[int, int]:
        """pte_to_pmd(): the pmd entry (pmd table, index) that maps `table`: where it is, as the
        kernel's pmd_t pointer says, the table's pfn without its generation."""
        word = self.page_mem.load64(self._pmd_word(table))
        return word >> 16, word & 0xFFFF

    def pte_update_pmd(self, table: int, pmd: tuple[int, int]) -> None:
        """pte_update_pmd(): `table` is now mapped by `pmd` (installed, or moved by mremap)."""
        self.page_mem.store64(self._pmd_word(table), (pmd[0] & PFN_MASK) << 16 | pmd[1])

    def pte_get(self, cpu, table: int) -> None:
        """pte_get(): one more user; the caller holds one already (a visitor, under the ptl)."""
        self.pte_get_many(cpu, table, 1)

    def pte_get_many(self, cpu, table: int, nr: int) -> None:
        """pte_get_many(): `nr` more users, with no zero check: the caller holds a reference."""
        if nr:
            self.pte_refcount(table).add(cpu, nr)

    def pte_get_unless_zero(self, cpu, table: int) -> bool:
        """pte_get_unless_zero(): one more user unless the count is 0 and the table is going."""
        if self.pte_refcount(table).inc_not_zero(cpu):
            return True
        self.count("pte_tryget_zero")
        return False

    def pte_try_get(self, cpu, mm: int, pmd: tuple[int, int]) -> tuple[bool, int]:
        """pte_try_get(): under the pmd lock, the pmd maps a table and it is not going (v2's
        form; v3's rcu_read_lock needs tables freed by RCU).  Whether a reference was taken,
        and the pmd entry read under the lock (none, or a table going at 0, if not)."""
        pml = self.page_table_lock(mm)
        pml.lock(cpu)
        e = self.page_mem.load64(self.table_off(pmd[0], pmd[1]))
        ok = bool(e & PTE_PRESENT) and self.pte_get_unless_zero(cpu, e >> FLAG_BITS)
        pml.unlock(cpu)
        return ok, e

    def pte_tryget_map(self, cpu, mm: int, pmd: tuple[int, int]) -> int:
        """pte_tryget_map(): pte_try_get, then the table the pmd maps (pte_offset_map: with a
        reference held, the pmd cannot change); 0 if it failed."""
        ok, e = self.pte_try_get(cpu, mm, pmd)
        return e >> FLAG_BITS if ok else 0

    def pte_tryget_map_lock(self, cpu, mm: int, vpn: int, pmd: tuple[int, int] | None = None):
        """pte_tryget_map_lock(): a visitor's reference, then pte_offset_map_lock(); (0, None)
        if there is no table or it is going."""
        if pmd is None:
            pmd = self.walk_pmd(cpu, mm, vpn, "pte_try_get")
            if not pmd[0]:
                return 0, None
        table = self.pte_tryget_map(cpu, mm, pmd)
        if not table:
            return 0, None
        got = self.pte_offset_map_lock(cpu, mm, vpn, pmd)
        if not got[0]:  # cannot happen with a reference held: nothing else unhooks a used table
            self.pte_put(cpu, mm, table, vpn)
        return got

    def pte_put_many(self, cpu, mm: int, table: int, vpn: int, nr: int) -> bool:
        """pte_put_many(): `nr` users fewer; the last one frees the table."""
        if not nr or not self.pte_refcount(table).sub_and_test(cpu, nr):
            return False
        self.free_user_pte_table(cpu, mm, table, vpn)
        return True

    def pte_put_vmf(self, cpu, vmf) -> None:
        """pte_put_vmf(): the fault's reference, dropped inside its mmap_lock section."""
        if vmf.flags & FAULT_FLAG_PTE_GET:
            vmf.flags &= ~FAULT_FLAG_PTE_GET
            self.pte_put(cpu, vmf.mm, vmf.table, vmf.vpn)

    def pte_alloc_get(self, cpu, mm: int, vpn: int) -> tuple[int, int, int]:
        """pte_alloc_get(): the fault's table with a reference: the one the pmd maps if it is not
        going; else a new one (pmd_install_get).  A table going at 0 is waited for until it is
        unhooked, and a new one is allocated."""
        pmd = self.pmd_alloc(cpu, mm, vpn)
        if not pmd:
            return 0, 0, 0
        i = vpn // self.geometry.pte % self.geometry.pmd
        attempt = 0
        while True:
            ok, e = self.pte_try_get(cpu, mm, (pmd, i))
            if ok:
                return pmd, i, e >> FLAG_BITS
            if e & PTE_PRESENT:
                self.count("pte_alloc_dying")
                cpu.sched.spin(cpu, attempt, self.page_mem, self.table_off(pmd, i), e, 64)
                attempt += 1
                continue
            new = self.pte_alloc_one(cpu, mm)
            if new is None:
                return 0, 0, 0
            cpu.window("__pte_alloc:before-pmd_lock")
            table = self.pmd_install_get(cpu, mm, (pmd, i), new)
            if table:
                return pmd, i, table

    def pmd_install_get(self, cpu, mm: int, pmd: tuple[int, int], new: int) -> int:
        """pmd_install_get(): under the pmd lock, install `new` with pte_refcount 1 (ours) if the
        pmd is none; else take a reference on what another CPU installed, and give `new` back.
        The table then mapped, with our reference; 0 if it is going (retry)."""
        pml = self.page_table_lock(mm)
        pml.lock(cpu)
        off = self.table_off(*pmd)
        e = self.page_mem.load64(off)
        if not e & PTE_PRESENT:
            self.pte_ref_init(cpu, new, pmd, 1)
            self.pmd_populate(mm, off, new)
            pml.unlock(cpu)
            return new
        got = self.pte_get_unless_zero(cpu, e >> FLAG_BITS)
        pml.unlock(cpu)
        self.pte_free_one(cpu, new)
        return e >> FLAG_BITS if got else 0

    def free_user_pte_table(self, cpu, mm: int, table: int, vpn: int) -> None:
        """free_user_pte_table(): pte_refcount is 0.  Under the pmd lock, unhook the table from the
        pmd that page->pmd names; flush the TLB (the IPI a CPU walking with interrupts off holds
        back); then free it (section 3: "unhook page ... TLB invalidate page ... free page")."""
        lo = vpn - vpn % self.geometry.pte
        if not self.unhook_user_pte_table(cpu, mm, table):
            return
        self.flush_tlb_mm_range(cpu, mm, lo, lo + self.geometry.pte, freed_tables=True)
        self.pte_free(cpu, mm, [(table, lo)])

    def unhook_user_pte_table(self, cpu, mm: int, table: int) -> bool:
        """Under the pmd lock, clear the pmd entry page->pmd names (pmdp_huge_get_and_clear) and
        take the table out of the mm.  The model's VM_BUG_ON: that entry maps this table."""
        pmd = self.pte_to_pmd(table)
        pml = self.page_table_lock(mm)
        pml.lock(cpu)
        off = self.table_off(*pmd)
        e = self.page_mem.load64(off)
        if not e & PTE_PRESENT or e >> FLAG_BITS != table:
            pml.unlock(cpu)
            cpu.report(
                PMD_BACKPOINTER,
                f"free_user_pte_table: table {table & PFN_MASK} of mm {mm} says pmd entry {pmd[1]} of "
                f"pmd table {pmd[0] & PFN_MASK} maps it, which holds {e:#x}",
                mm=mm,
            )
            return False
        self.page_mem.store64(off, 0)
        pml.unlock(cpu)
        self.mm_dec_nr_ptes(mm)
        self.count("user_pte_tables_freed")
        return True

    def sweep_tables(self, cpu, tables: np.ndarray) -> None:
        """Every live PTE table, vectorised: pte_refcount is its entries that are not none, and
        page->pmd names the pmd entry that maps it."""
        if not len(tables):
            return
        pfns = tables[:, 0] & PFN_MASK
        entries = np.count_nonzero(self.pool.data.view("<i8")[pfns, : self.geometry.pte], axis=1)
        private = self.pool.pages["private"][pfns]
        counts = (private[:, _COUNT_WORD] & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        bad = np.flatnonzero(counts != entries)
        if len(bad):
            k = int(bad[0])
            cpu.report(
                PTE_REFCOUNT,
                f"mm {int(tables[k, 3])}: PTE table {int(pfns[k])} has pte_refcount {int(counts[k])} and "
                f"{int(entries[k])} entries that are not none ({len(bad)} table(s) wrong)",
                mm=int(tables[k, 3]),
            )
        want = (tables[:, 1] & PFN_MASK) << 16 | tables[:, 2]
        bad = np.flatnonzero(private[:, _PMD_WORD] != want)
        if len(bad):
            k = int(bad[0])
            pmd, i = int(private[k, _PMD_WORD]) >> 16, int(private[k, _PMD_WORD]) & 0xFFFF
            cpu.report(
                PMD_BACKPOINTER,
                f"mm {int(tables[k, 3])}: PTE table {int(pfns[k])} is mapped by entry {int(tables[k, 2])} of pmd "
                f"table {int(tables[k, 1]) & PFN_MASK}, but page->pmd names entry {i} of pmd table "
                f"{pmd & PFN_MASK}",
                mm=int(tables[k, 3]),
            )


pte_ref = replace(
    mmap_lock,
    name="pte_ref",
    doc="the seed: entries and visitors hold pte_refcount; at 0 unhooked, flushed (IPI), freed",
    model=PteRefModel,
)


class WalkerWithoutTryGet(PteRefModel):
    """DELIBERATELY BROKEN: section 3's walker as it was before the refcount: mmap_lock for read and
    pte_offset_map_lock(), no pte_try_get ("/* broken!! */").  A MADV_DONTNEED on another
    thread drops the table's count to 0 and frees it while the walker maps or walks it."""

    def walk_pte_range(self, cpu, mm: int, start: int, end: int) -> int:
        table, ptl = self.pte_offset_map_lock(cpu, mm, start)
        if not table:
            return 0
        found = self.walk_locked_table(cpu, table, start, end)
        ptl.unlock(cpu)
        return found


class GetNotUnlessZero(PteRefModel):
    """DELIBERATELY BROKEN: pte_try_get() with pte_get() where pte_get_unless_zero() is needed: a
    table whose count fell to 0 is still mapped until free_user_pte_table takes the pmd lock,
    and a visitor takes a reference to it from 0."""

    def pte_get_unless_zero(self, cpu, table: int) -> bool:
        self.pte_get(cpu, table)
        return True


class FreedBeforeFlush(PteRefModel):
    """DELIBERATELY BROKEN: section 3's fast GUP diagram reversed: the table is freed right after it
    is unhooked, and the TLB is invalidated after.  The IPI was what held the free back while
    fast GUP walked the table with interrupts off."""

    def free_user_pte_table(self, cpu, mm: int, table: int, vpn: int) -> None:
        lo = vpn - vpn % self.geometry.pte
        if self.unhook_user_pte_table(cpu, mm, table):
            self.pte_free(cpu, mm, [(table, lo)])
            self.flush_tlb_mm_range(cpu, mm, lo, lo + self.geometry.pte, freed_tables=True)


class ZapWithoutPtePut(PteRefModel):
    """DELIBERATELY BROKEN: zap_pte_range() clears entries and does not put them (nr_put lost):
    their references stay, so an emptied table is never freed."""

    def zap_pte_range(self, cpu, tlb: MmuGather, table: int, start: int, end: int) -> int:
        super().zap_pte_range(cpu, tlb, table, start, end)
        return 0


class BackpointerWithoutIndex(PteRefModel):
    """DELIBERATELY BROKEN (made up, not from the series): pte_ref_init() records the pmd table
    but not the entry in it (index 0 for every table): at zero, free_user_pte_table unhooks
    whatever entry 0 maps."""

    def pte_update_pmd(self, table: int, pmd: tuple[int, int]) -> None:
        super().pte_update_pmd(table, (pmd[0], 0))


MUTANTS = (
    mutant(
        pte_ref,
        "walker_without_tryget",
        WALK_FREED_TABLE,
        "the seed, section 3: thread A's 'pte_offset_map_lock()' marked '/* broken!! */' while thread B's "
        "zap_pte_range() frees the table",
        "the page-table walker maps and locks a table with no pte_try_get",
        "walker_freed_table",
        model=WalkerWithoutTryGet,
    ),
    mutant(
        pte_ref,
        "get_not_unless_zero",
        REFCOUNT_INC_ON_ZERO,
        "the seed, section 3: 'pte_try_get() --> pte_get_unless_zero'; section 4: 'Increment a pte_refcount "
        "unless it is 0'",
        "pte_try_get takes its reference with pte_get, from 0 too",
        "pte_tryget_zero",
        model=GetNotUnlessZero,
    ),
    mutant(
        pte_ref,
        "freed_before_flush",
        WALK_FREED_TABLE,
        "the seed, section 3, fast GUP: 'unhook page ... TLB invalidate page ... local_irq_restore(); free page'",
        "the table is freed before the TLB invalidation that fast GUP holds back",
        "gup_fast_unhooked",
        model=FreedBeforeFlush,
    ),
    mutant(
        pte_ref,
        "zap_without_pte_put",
        PTE_REFCOUNT,
        "the seed, section 2: 'The !pte_none() entry ... will hold a reference'; [PATCH v3 15/15] "
        "zap_pte_range's __pte_put_many(tlb, mm, pmd, start, nr_put)",
        "zap_pte_range clears entries without putting their references",
        "user_pte_tables_freed",
        model=ZapWithoutPtePut,
    ),
    mutant(
        pte_ref,
        "backpointer_without_index",
        PMD_BACKPOINTER,
        "the seed, section 2: 'The pmd member record the pmd entry that maps the user PTE page table page'",
        "page->pmd records the pmd table but not the entry",
        "user_pte_tables_freed",
        model=BackpointerWithoutIndex,
    ),
)
