"""The swap device (mm/swapfile.c) and the page lock migration entries wait on.

A swap slot holds what a page held when MADV_PAGEOUT wrote it out, and a
count: one per swap entry that names it (swap_duplicate at fork, swap_free
when an entry goes).  The model has no swap cache: every mm that faults a
shared slot in reads its own copy, which is what a private anonymous COW
mapping sees anyway.

A migration entry names the page being migrated, which the migrating CPU
holds locked (PG_locked in struct page's flags); a fault that finds one
waits for the unlock (migration_entry_wait) and retries.
"""

from __future__ import annotations

import numpy as np

from policies.mm.checks import STUCK_MIGRATION, SWAP_COUNT, SWAP_FREED
from policies.mm.pgtable import describe_entry, swp_offset
from policies.mm.rmap import Rmap
from shm.pool import PAGE_FIELDS, PAGE_STRIDE, PFN_MASK

SWAP_SLOT = np.dtype([("count", "<i4"), ("pad", "<i4"), ("data", "<i8", (2,))])
PG_LOCKED = 1
_FLAGS = PAGE_FIELDS["flags"]


class Swap(Rmap):
    """Swap slots, and struct page's lock."""

    swap0: int
    swap_slots: int
    swap_map: np.ndarray

    def _slot_off(self, slot: int) -> int:
        return self.swap0 + slot * SWAP_SLOT.itemsize

    def swap_count(self, slot: int) -> int:
        return self.mm_mem.load32(self._slot_off(slot))

    def get_swap_page(self, cpu) -> int:
        """folio_alloc_swap(): a free slot, its count 1; -1 if the device is full."""
        start = self.mm_mem.fetch_add32(self.global_off("swap_hint"), 1) % self.swap_slots
        for k in range(self.swap_slots):
            slot = (start + k) % self.swap_slots
            off = self._slot_off(slot)
            if self.mm_mem.load32(off) == 0 and self.mm_mem.cmpxchg32(off, 0, 1) == 0:
                return slot
        return -1

    def swap_duplicate(self, cpu, slot: int) -> None:
        """swap_duplicate(): fork copied an entry naming the slot."""
        if self.mm_mem.fetch_add32(self._slot_off(slot), 1) <= 0:
            cpu.report(SWAP_COUNT, f"swap_duplicate of swap slot {slot}, which is free", slot=slot)

    def swap_free(self, cpu, slot: int) -> None:
        """swap_free(): an entry naming the slot is gone; at zero the slot is free."""
        if self.mm_mem.fetch_sub32(self._slot_off(slot), 1) <= 0:
            cpu.report(SWAP_COUNT, f"swap_free of swap slot {slot}, which is already free", slot=slot)

    def free_swap_and_cache(self, cpu, slot: int) -> None:
        """free_swap_and_cache(): zap dropped an entry naming the slot."""
        self.swap_free(cpu, slot)

    def swap_writepage(self, cpu, slot: int, ref: int) -> None:
        """The page's contents (its stamp and write count) written to the slot."""
        off = self._slot_off(slot) + 8
        for i in (0, 1):
            self.mm_mem.store64(off + 8 * i, self.pool.read(cpu, ref, i, "swap_writepage"))

    def swap_read_folio(self, cpu, slot: int, ref: int) -> bool:
        """The slot read into the new page `ref`; reading a free slot is a use-after-free."""
        if self.swap_count(slot) <= 0:
            cpu.report(
                SWAP_FREED,
                f"swap_read_folio: swap slot {slot} was freed: another swap-in took it, and this one "
                "did not recheck the PTE under the ptl",
                slot=slot,
            )
            return False
        off = self._slot_off(slot) + 8
        data = self.pool_data0 + (ref & PFN_MASK) * self.page_size
        for i in (0, 1):
            self.page_mem.store64(data + 8 * i, self.mm_mem.load64(off + 8 * i))
        return True

    def swap_slots_used(self) -> np.ndarray:
        """Each slot's count (the sweep's view)."""
        return self.swap_map["count"]

    def check_migration_entry(self, cpu, mm: int, vpn: int, entry: int) -> bool:
        """Under the ptl: a migration entry names a page its migration holds locked until it has
        put a PTE back (remove_migration_pte runs before folio_unlock).  One that no migration
        holds is left behind for good."""
        ref = swp_offset(entry)
        if self.pool.alive(ref) and self.page_mem.load32(self._flags_off(ref)) & PG_LOCKED:
            return True
        cpu.report(
            STUCK_MIGRATION,
            f"mm {mm}: vpn {vpn} holds a {describe_entry(entry)} that no migration holds: every fault on "
            "it retries for ever",
            mm=mm,
            vpn=vpn,
        )
        return False

    # -- struct page's lock -------------------------------------------------------------
    def _flags_off(self, ref: int) -> int:
        return self.page0 + (ref & PFN_MASK) * PAGE_STRIDE + _FLAGS

    def folio_trylock(self, cpu, ref: int) -> bool:
        return not self.page_mem.fetch_or32(self._flags_off(ref), PG_LOCKED) & PG_LOCKED

    def folio_unlock(self, cpu, ref: int) -> None:
        self.page_mem.fetch_and32(self._flags_off(ref), ~PG_LOCKED)

    def folio_wait_locked(self, cpu, ref: int) -> None:
        """folio_wait_bit(PG_locked): sleep until the page is unlocked."""
        off = self._flags_off(ref)
        attempt = 0
        while (v := self.page_mem.load32(off)) & PG_LOCKED:
            cpu.sched.spin(cpu, attempt, self.page_mem, off, v)
            attempt += 1
