"""Communication-directed preemption: Snowboard's PMC idea (Gong et al., SOSP 2021) across processes.

A profiling run executes the program with the CPUs taking turns, one
operation each, and records every shared access of every operation (the
C extension's record buffer).  A *channel* is a word that one CPU's
operation reads and another CPU's operation writes later in that run.  A
channel schedule replays the profiling run's turns up to the read, preempts
the reader just before it (an access-level point), lets the writer run
through the operation that writes the word, and hands the reader back (or,
on a coin, lets the writer go on): the read now sees what the writer did in
the middle of the reader's operation, which is where a missing lock, a
missing recheck or a missing grace period shows.

Channels are drawn uniformly over (reader operation, writer operation)
pairs first and over their instances second, so a pair with thousands of
lock-word reads does not drown a pair with one page-table read.  Nothing
here knows a scenario: the words are offsets, the operations names.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from stress.schedulers.state import AT_BOUNDARY

KIND_SHIFT, TAG_SHIFT = 48, 56
OFF_MASK = (1 << KIND_SHIFT) - 1
LOAD, STORE, RMW, FILL = 0, 1, 2, 8
MAX_FILL_WORDS = 64


@dataclass(frozen=True)
class Channel:
    """CPU `reader` at operation `rop`, just before its access number `acc`, reads a word that CPU
    `writer` writes in its operation `wop`, which it has not begun by then."""

    reader: int
    rop: int
    acc: int
    writer: int
    wop: int
    word: tuple[int, int]


def turns(program: list) -> dict:
    """The profiling schedule: at every operation's end, the next CPU takes its turn."""
    n = len(program)
    devs = [[[o, AT_BOUNDARY, (c + 1) % n] for o in range(len(p))] for c, p in enumerate(program)]
    return {"first": 0, "deviations": devs + [[]]}


def _words(recs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, word key, kind) of each access; a fill is a write of every word it covers."""
    recs = recs.astype(np.int64)
    kind = (recs >> KIND_SHIFT) & 0xFF
    tag = (recs >> TAG_SHIFT) & 0xFF
    word = (tag << KIND_SHIFT) | ((recs & OFF_MASK) & ~7)
    idx = np.arange(len(recs))
    fills = np.flatnonzero(kind >= FILL)
    if len(fills):
        extra_i, extra_w = [], []
        for f in fills:
            n = min(1 << max(0, int(kind[f]) - FILL - 3), MAX_FILL_WORDS)
            extra_i.append(np.full(n, f))
            extra_w.append(word[f] + 8 * np.arange(n))
        idx = np.concatenate([idx, *extra_i])
        word = np.concatenate([word, *extra_w])
        kind = np.concatenate([kind, np.full(sum(len(e) for e in extra_i), STORE)])
    return idx, word, kind


Channels = dict[tuple[int, int], dict[tuple[int, int, int, int], dict[int, list[int]]]]


def channels(profile: list, kinds: list[list[int]]) -> Channels:
    """The channels of a profiled run, nested for a uniform choice at each level: by the kinds
    of the reader's and the writer's operations (`kinds[cpu][op]`), then by the two operations
    (reader cpu, its op, writer cpu, its op), then by the word, then the read's access number."""
    writes: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # word -> (clock, cpu, op)
    reads: dict[tuple[int, int], tuple[int, dict[int, list[int]]]] = {}
    ncpus = len(kinds)
    for cpu, ops in enumerate(profile[:ncpus]):
        for op, (clock, recs) in enumerate(ops[: len(kinds[cpu])]):
            if not len(recs):
                continue
            idx, word, kind = _words(recs)
            for w in np.unique(word[(kind == STORE) | (kind == RMW)]):
                writes[int(w)].append((clock, cpu, op))
            r = (kind == LOAD) | (kind == RMW)
            by_word: dict[int, list[int]] = defaultdict(list)
            for i, w in zip(idx[r].tolist(), word[r].tolist()):
                by_word[w].append(i + 1)
            reads[(cpu, op)] = (clock, by_word)
    out: Channels = defaultdict(lambda: defaultdict(dict))
    for (cpu, op), (clock, by_word) in reads.items():
        for w, accs in by_word.items():
            for wclock, wcpu, wop in writes.get(w, ()):
                if wcpu != cpu and wclock > clock:
                    out[(kinds[cpu][op], kinds[wcpu][wop])][(cpu, op, wcpu, wop)][w] = accs
    return out


def pick(chans: Channels, rng: random.Random) -> Channel | None:
    """A channel, uniform at each level of `channels`."""
    if not chans:
        return None
    pair = chans[rng.choice(sorted(chans))]
    cpu, op, wcpu, wop = rng.choice(sorted(pair))
    words = pair[(cpu, op, wcpu, wop)]
    w = rng.choice(sorted(words))
    return Channel(cpu, op, rng.choice(words[w]), wcpu, wop, (w >> KIND_SHIFT, w & OFF_MASK))


def schedule(program: list, profile: list, ch: Channel, hand_back: bool) -> dict:
    """The profiling turns up to the reader's access, then the writer through its operation."""
    base = turns(program)
    devs = [list(map(list, d)) for d in base["deviations"]]
    n = len(program)
    clock_at = profile[ch.reader][ch.rop][0] + ch.acc
    devs[ch.reader].append([ch.rop, ch.acc, ch.writer])
    if ch.writer < n:
        wops = profile[ch.writer]
        now = max((o for o, (c, _) in enumerate(wops) if c <= clock_at), default=0)
        devs[ch.writer] = [d for d in devs[ch.writer] if not now < d[0] < ch.wop]
        devs[ch.writer] = [d for d in devs[ch.writer] if d[0] != ch.wop]
        if hand_back:
            devs[ch.writer].append([ch.wop, AT_BOUNDARY, ch.reader])
    return {"first": base["first"], "deviations": devs}
