"""The mm model's checks: what each one means (reported where they happen, and in sweep.py).

Online (the model's WARN_ONs, reported where they happen: pgtable.py,
rmap.py, fault.py, mmu_gather.py, fork.py, gup.py, access.py): a walk that reaches
a freed table (or takes a freed table's ptl), a PTE installed for a VMA
munmap zapped or outside its VMA, anon_vma_prepare without mmap_lock, a
write that lands in a page after copy-on-write copied it, fork copying an
anon page into a VMA without anon_vma, free_pgtables freeing a table that
still maps a page, a write to a page another mm shares, a GUP pin that sees
another mm's write, a released FOLL_PIN pin whose page its mm no longer
maps though it was not unmapped, a load through a stale TLB entry or a PTE to a freed
page, page_remove_rmap of a page that is not mapped, swap-in from a freed
swap slot, a swap slot freed more often than it was named.

Quiescent (`sweep`): every pgd and pmd entry names a live table; every
present PTE lies in a live VMA of its mm; each
mm's RSS, swap entries and pgtable_bytes equal what its tables map and hold
(check_mm's "Bad rss-counter state"); each page's _mapcount and _refcount
equal its mappings; each swap slot's count equals the entries that name it;
no migration entry is left; every allocated page is a page table, a mapped
page or the zero page (else nothing owns it: a leak); every VMA and index
array in the caches belongs to a live mm.
"""

from __future__ import annotations

from shm.checks import define_check

WALK_FREED_TABLE = define_check(
    "mm.walk-freed-table",
    "use-after-free",
    "a page-table walk (the MMU, fast GUP, a fault, zap) reads a table that was freed or reused",
)
PTE_AFTER_ZAP = define_check(
    "mm.pte-after-zap",
    "invariant",
    "a fault installs a PTE for a VMA that munmap has already zapped: the PTE outlives its VMA",
)
PTE_OUTSIDE_VMA = define_check(
    "mm.pte-outside-vma",
    "invariant",
    "a fault installs a PTE outside the VMA it holds, or through a VMA of another mm (a reused slot)",
)
FORK_NO_ANON_VMA = define_check(
    "mm.fork-no-anon-vma",
    "invariant",
    "fork copies an anon page into a child VMA without anon_vma: anon_vma_fork did not run, or the parent's "
    "VMA changed under dup_mmap",
)
ANON_VMA_UNLOCKED = define_check(
    "mm.anon-vma-unlocked",
    "lock-misuse",
    "anon_vma_prepare() without mmap_lock (mmap_assert_locked in __anon_vma_prepare): a fault that holds only "
    "its VMA must fall back to mmap_lock for a VMA's first anonymous page",
)
LOST_WRITE = define_check(
    "mm.lost-write",
    "invariant",
    "a write landed in a page after copy-on-write copied it: the writer's mm now maps the copy and the write "
    "is lost (a writable TLB entry fork write-protected but did not flush yet)",
)
PIN_FOREIGN_WRITE = define_check(
    "mm.pin-foreign-write",
    "invariant",
    "a page GUP pinned from one mm is written by another while the pin reads it: copy-on-write reused a "
    "page another mm still holds (CVE-2020-29374)",
)
PIN_DIVERGED = define_check(
    "mm.pin-diverged",
    "invariant",
    "a page FOLL_PIN pinned from an mm is no longer the page that mm maps there, though the mm never unmapped "
    "it: copy-on-write moved the mm to a copy and the pin reads or DMAs into a page the process cannot see "
    "(70e806e4e645, a7f226604170, PageAnonExclusive)",
)
FREE_MAPPED_TABLE = define_check(
    "mm.free-mapped-table",
    "invariant",
    "a page table is freed while it still maps a page (free_pgtables, or a table reclaimed while refilled)",
)
COW_WRITE_SHARED = define_check(
    "mm.cow-write-shared", "invariant", "a CPU writes a page another mm still maps: copy-on-write broken"
)
STALE_TLB = define_check(
    "tlb.stale",
    "stale-tlb",
    "a CPU loads or stores through a TLB entry to a page that was freed, or whose PTE was cleared by a call "
    "that has since returned (munmap, mmap, MADV_DONTNEED, a COW fault, a migration)",
)
ACCESS_FREED_PAGE = define_check(
    "mm.pte-maps-freed-page",
    "use-after-free",
    "a CPU's load or store goes through a present PTE to a page that was freed or reused",
)
RMAP_UNDERFLOW = define_check("mm.rmap-underflow", "refcount", "page_remove_rmap() of a page that is not mapped")
MAPS_FREED_TABLE = define_check(
    "mm.pmd-maps-freed-table",
    "use-after-free",
    "quiescent: a pgd or pmd entry names a page table that was freed or reused (a table freed and not "
    "unhooked, or unhooked and hooked back)",
)
PTE_IN_NO_VMA = define_check("mm.pte-in-no-vma", "invariant", "quiescent: a present PTE lies in no VMA of its mm")
BAD_RSS = define_check("mm.rss", "invariant", "quiescent: an mm's RSS counter differs from the pages its tables map")
BAD_PGTABLE_BYTES = define_check(
    "mm.pgtable-bytes", "invariant", "quiescent: an mm's pgtable_bytes differs from the tables it holds"
)
BAD_PAGE_REFS = define_check(
    "mm.page-refs", "refcount", "quiescent: a page's _mapcount or _refcount differs from its mappings"
)
SWAP_FREED = define_check(
    "mm.swap-freed",
    "use-after-free",
    "swap-in reads a swap slot that was freed (do_swap_page without its pte_same recheck under the ptl)",
)
SWAP_COUNT = define_check(
    "mm.swap-count",
    "refcount",
    "a swap slot's count differs from the swap entries that name it (swap_free below zero, or at a quiescent "
    "point a slot no entry names)",
)
STUCK_MIGRATION = define_check(
    "mm.stuck-migration",
    "invariant",
    "quiescent: a migration entry is left in a page table with no migration in flight (every fault on it "
    "waits and retries for ever)",
)
MM_UAF = define_check(
    "mm.uaf",
    "use-after-free",
    "an mm_struct used after it was freed, or through a reference to a slot another mm now holds (the s390 "
    "seed: 'what guarantees that mm has not been freed now?!')",
)
