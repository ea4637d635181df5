"""never_free: today's kernel, where an emptied PTE table stays until free_pgtables.

MADV_DONTNEED zaps the pages under mmap_lock for read and keeps the tables
(the seed's section 1: "the kernel can not reclaim [them] ... until munmap()
or exit"); free_pgtables frees them under mmap_lock for write, which every
walker and fault excludes (section 3's first diagram).  The baseline the
other policies are measured against: page-table bytes that only grow.
"""

from __future__ import annotations

from dataclasses import replace

from policies.vma_lookup.mmap_lock import mmap_lock

never_free = replace(
    mmap_lock,
    name="never_free",
    doc="tables freed only by free_pgtables (munmap, exit): MADV_DONTNEED keeps them",
)
