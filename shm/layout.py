"""Typed regions of a shared segment, declared once as numpy structured dtypes.

A `Layout` gives both numpy views (bulk reads, vectorised sweeps; plain numpy
stores model plain C stores) and byte offsets (for the atomics of
`shm.Memory`).  Its digest covers every region's name, dtype and count, so a
segment attached with another layout is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

ALIGN = 64
MAGIC = b"MMTORTUR"
LAYOUT_VERSION = 1

HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("creator", "<i4"),
        ("size", "<u8"),
        ("digest", "S32"),
        ("name", "S32"),
        ("params", "S896"),
    ]
)


class LayoutError(Exception):
    """A segment does not match the layout it is attached with."""


@dataclass(frozen=True)
class Region:
    name: str
    dtype: np.dtype
    count: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.count < 0:
            raise ValueError(f"region {self.name}: negative count")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Layout:
    """Regions placed one after another, each 64-byte aligned, after a header."""

    def __init__(self, name: str, regions: list[Region], params: dict | None = None):
        self.name = name
        self.regions = {r.name: r for r in regions}
        if len(self.regions) != len(regions):
            raise ValueError(f"layout {name}: duplicate region names")
        self.params = dict(params or {})
        self.offsets: dict[str, int] = {}
        off = _align(HEADER.itemsize)
        for r in regions:
            self.offsets[r.name] = off
            off = _align(off + r.dtype.itemsize * r.count)
        self.size = max(off, ALIGN)
        h = hashlib.sha256()
        h.update(f"{name}/{LAYOUT_VERSION}".encode())
        for r in regions:
            h.update(f"|{r.name}:{r.count}:{r.dtype.descr!r}".encode())
        h.update(json.dumps(self.params, sort_keys=True).encode())
        self.digest = h.hexdigest()[:32]

    def offset(self, region: str, index: int = 0, field: str | None = None) -> int:
        """Byte offset of `region[index].field` (field may be dotted: "lock.owner")."""
        r = self.regions[region]
        if not 0 <= index < r.count:
            raise IndexError(f"{region}[{index}] out of range (count {r.count})")
        off = self.offsets[region] + index * r.dtype.itemsize
        dt = r.dtype
        if field:
            for part in field.split("."):
                if dt.fields is None or part not in dt.fields:
                    raise KeyError(f"{region} has no field {field!r}")
                sub, o = dt.fields[part][:2]
                off += o
                dt = sub
        return off

    def stride(self, region: str) -> int:
        return self.regions[region].dtype.itemsize

    def view(self, buf, region: str) -> np.ndarray:
        r = self.regions[region]
        return np.ndarray((r.count,), dtype=r.dtype, buffer=buf, offset=self.offsets[region])

    def describe(self, off: int) -> str:
        """Name the field at a byte offset: 'counter[2].lock'."""
        for name, base in self.offsets.items():
            r = self.regions[name]
            end = base + r.dtype.itemsize * r.count
            if base <= off < end:
                index, rest = divmod(off - base, r.dtype.itemsize)
                return f"{name}[{index}]{_field_at(r.dtype, rest)}"
        return f"+{off:#x}"

    def fields(self, dtype_match) -> Iterator[tuple[str, str]]:
        """(region, dotted field) of every field whose dtype satisfies dtype_match."""
        for name, r in self.regions.items():
            for path in _walk(r.dtype, "", dtype_match):
                yield name, path


def field_offsets(dt: np.dtype) -> dict[str, int]:
    """Byte offset of every field of a structured dtype (where each word lives, said once)."""
    if dt.fields is None:
        raise TypeError(f"{dt} is not a structured dtype")
    return {name: spec[1] for name, spec in dt.fields.items()}


def field_dtype(dt: np.dtype, name: str) -> np.dtype:
    if dt.fields is None:
        raise TypeError(f"{dt} is not a structured dtype")
    return dt.fields[name][0]


def _field_at(dt: np.dtype, rel: int) -> str:
    if dt.fields is None:
        return ""
    for fname, (sub, o, *_) in dt.fields.items():
        if o <= rel < o + sub.itemsize:
            if sub.subdtype is not None:
                base, _shape = sub.subdtype
                i, r2 = divmod(rel - o, base.itemsize)
                return f".{fname}[{i}]{_field_at(base, r2)}"
            return f".{fname}{_field_at(sub, rel - o)}"
    return f"+{rel}"


def _walk(dt: np.dtype, prefix: str, match) -> Iterator[str]:
    if dt.fields is None:
        return
    for fname, (sub, *_rest) in dt.fields.items():
        path = f"{prefix}{fname}"
        if match(sub):
            yield path
        else:
            yield from _walk(sub, path + ".", match)
