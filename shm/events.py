"""The machine's vocabulary: finding kinds and trace events.

A trace event is one 64-bit word, so that recording it is one atomic store
into the CPU's ring (which lives in shared memory and so survives a SIGKILL
of the CPU that wrote it): bits 44..62 a per-CPU sequence number, 36..43 the
event, 0..35 its argument (an address, a pfn, an operation index...).
"""

from __future__ import annotations

KINDS = (
    "use-after-free",
    "double-free",
    "leak",
    "refcount",
    "invariant",
    "stale-tlb",
    "invalid-context",
    "lock-misuse",
    "deadlock",
    "cpu-crash",
    "hang",
)
STOPS_THE_RUN = ("deadlock", "hang")  # stuck CPUs: the run ends even when it counts findings
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}

TRACE_LEN = 128
TRACE_MASK = TRACE_LEN - 1
SEQ_BITS = 19
SEQ_MASK = (1 << SEQ_BITS) - 1
ARG_BITS = 36
ARG_MASK = (1 << ARG_BITS) - 1

EVENTS = (
    "none",
    "op-begin",
    "op-end",
    "lock",
    "unlock",
    "read-lock",
    "read-unlock",
    "alloc",
    "free",
    "gp-begin",
    "gp-end",
    "call-rcu",
    "rcu-callback",
    "finding",
    "mark",
    "block",
    "wake",
    "irq-off",
    "irq-on",
    "srcu-lock",
    "srcu-unlock",
    "refcount",
    "switch",
    "ipi",
    "tlb-flush",
    "window",
)
EV = {name: i for i, name in enumerate(EVENTS)}

ADDR_SEG_SHIFT = 33
ADDR_OFF_MASK = (1 << ADDR_SEG_SHIFT) - 1


def encode(seq: int, event: int, arg: int) -> int:
    return ((seq & SEQ_MASK) << 44) | (event << ARG_BITS) | (arg & ARG_MASK)


def decode(word: int) -> tuple[int, int, int]:
    return (word >> 44) & SEQ_MASK, (word >> ARG_BITS) & 0xFF, word & ARG_MASK


def address(seg: int, off: int) -> int:
    """A machine-wide address: which segment, which byte."""
    return (seg << ADDR_SEG_SHIFT) | off


def split_address(addr: int) -> tuple[int, int]:
    return addr >> ADDR_SEG_SHIFT, addr & ADDR_OFF_MASK


def ordered(ring) -> list[int]:
    """The words of a ring, oldest first (sequence numbers may have wrapped once)."""
    words = [int(w) for w in ring if int(w)]
    if not words:
        return []
    seqs = [decode(w)[0] for w in words]
    if max(seqs) - min(seqs) > 2 * TRACE_LEN:
        half = 1 << (SEQ_BITS - 1)
        seqs = [s + (1 << SEQ_BITS) if s < half else s for s in seqs]
    return [w for _, w in sorted(zip(seqs, words))]
