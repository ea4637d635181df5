"""The shape of the modelled address space: entries per table at each level."""

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
