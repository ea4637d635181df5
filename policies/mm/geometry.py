"""The shape of the modelled address space: entries per table at each level; and how much
memory page tables can take, the pte_ref seed's question."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Geometry:
    """Entries per table at each level; small by default so that CPUs collide on tables."""

    pgd: int = 4
    pmd: int = 4
    pte: int = 8
    pages: int = field(init=False)
    pmd_span: int = field(init=False)

    def __post_init__(self) -> None:
        for n in ("pgd", "pmd", "pte"):
            if not 1 <= getattr(self, n) <= 512:
                raise ValueError(f"geometry: {n} must be between 1 and 512 entries")
        object.__setattr__(self, "pmd_span", self.pmd * self.pte)
        object.__setattr__(self, "pages", self.pgd * self.pmd * self.pte)

    def split(self, vpn: int) -> tuple[int, int, int]:
        """pgd_index, pmd_index, pte_index of a virtual page number."""
        return vpn // self.pmd_span, vpn // self.pte % self.pmd, vpn % self.pte

    def page_size_needed(self) -> int:
        return 8 * max(self.pgd, self.pmd, self.pte, 4)


PTE_LEVEL, PMD_LEVEL = 0, 1


def max_table_bytes(user_bytes: int, page_bytes: int, entry_bytes: int, level: int) -> int:
    """The most memory one process's page tables at `level` (PTE_LEVEL, PMD_LEVEL) can take: one
    entry for each stretch of the address space an entry of that level maps (a page, a PTE
    table's reach), whole tables of them (the pte_ref seed's preface: 3 MiB and 3 KiB for 3 GiB
    of 32-bit user space, 512 GiB and 1 GiB for 48 bits; folded levels count their entries)."""
    entries_per_table = page_bytes // entry_bytes
    return user_bytes // (page_bytes * entries_per_table**level) * entry_bytes
