"""seqcount_t torture: writers update a multi-word record, readers must never see it torn.

Writers are serialised by a spinlock and bracket their stores with
write_seqcount_begin/end; every word of the record holds the same value.
Readers copy the record between read_seqcount_begin and read_seqcount_retry
and retry while a writer was active (include/linux/seqlock.h).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from policies import register
from policies.scenario import Operation, Policy, Region, Scenario, World, mutant
from shm import SEQCOUNT, SPINLOCK
from shm.checks import SEQCOUNT_CONCURRENT_WRITERS, SEQCOUNT_END_WITHOUT_BEGIN, define_check

NWORDS = 4
TORN_READ = define_check(
    "seqcount.torn-read", "invariant", "a seqcount reader returned a record a writer was halfway through"
)
RECORD = np.dtype(
    [("seq", SEQCOUNT), ("lock", SPINLOCK), ("words", "<i8", (NWORDS,)), ("pad", "<i8", (3,))],
    align=True,
)


def read_record(w: World) -> list[int]:
    mem, cpu = w.mem, w.cpu
    out = []
    for off in w.word_offs:
        out.append(mem.load64(off))
        cpu.window("seqcount reader:between-words")
    return out


def read_with_retry(w: World) -> tuple[list[int], int]:
    """The read_seqcount_begin / read_seqcount_retry loop; returns the copy and the retries."""
    retries = 0
    while True:
        s = w.seq.read_begin(w.cpu)
        words = read_record(w)
        if not w.seq.read_retry(w.cpu, s):
            return words, retries
        retries += 1


def read_without_retry(w: World) -> tuple[list[int], int]:
    """DELIBERATELY BROKEN: samples the sequence but never checks it again.

    A reader racing a writer returns a record that is half old, half new.
    Must trip seqcount.torn-read."""
    w.seq.read_begin(w.cpu)
    return read_record(w), 0


def write_locked(w: World) -> None:
    """Writers serialised by the record's spinlock, as seqcount_spinlock_t requires."""
    w.lock.lock(w.cpu)
    write_section(w)
    w.lock.unlock(w.cpu)


def write_unlocked(w: World) -> None:
    """DELIBERATELY BROKEN: the writer does not take the lock that serialises writers.

    Two writers inside at once make the sequence even while both write.
    Must trip seqcount.concurrent-writers (lockdep's seqcount writer assertion)."""
    write_section(w)


def write_section(w: World, end=None) -> None:
    mem, cpu = w.mem, w.cpu
    w.seq.write_begin(cpu)
    value = mem.load64(w.word_offs[0]) + 1
    for off in w.word_offs:
        mem.store64(off, value)
        cpu.window("seqcount writer:between-words")
    w.seq.write_end(cpu)
    if end is not None:
        end(w)
    w.count("writes")


def write_ended_twice(w: World) -> None:
    """DELIBERATELY BROKEN: an error path closes the write section again.

    Must trip seqcount.end-without-begin (and would leave the count odd, so
    that every reader spins)."""
    w.lock.lock(w.cpu)
    write_section(w, end=lambda w: w.seq.write_end(w.cpu))
    w.lock.unlock(w.cpu)


@dataclass(frozen=True, kw_only=True)
class SeqcountPolicy(Policy):
    read_section: Callable[[World], tuple[list[int], int]]
    write: Callable[[World], None] = write_locked


class SeqcountScenario(Scenario):
    name = "seqcount"
    doc = "seqcount_t: readers retry until they copy a record no writer touched"
    counters = ("reads", "retries", "writes")

    def regions(self, ncpus: int) -> list[Region]:
        return [Region("record", RECORD)]

    def attach(self, w: World) -> None:
        w.seq = w.seqcount("record", 0, "seq")
        w.lock = w.spinlock("record", 0, "lock")
        base = w.offset("record", 0, "words")
        w.word_offs = [base + 8 * i for i in range(NWORDS)]

    def operations(self, policy: SeqcountPolicy) -> tuple[Operation, ...]:
        read_section = policy.read_section

        def read(w: World) -> None:
            words, retries = read_section(w)
            w.count("reads")
            w.count("retries", retries)
            if len(set(words)) != 1:
                w.cpu.report(TORN_READ, f"seqcount reader copied a torn record: {words}", record=words)

        return (Operation("read", 6, read), Operation("write", 2, policy.write))


seqcount = SeqcountPolicy("seqcount", doc="read_seqcount_begin / read_seqcount_retry", read_section=read_with_retry)
SeqcountScenario.policies = (
    seqcount,
    # DELIBERATELY BROKEN below.
    mutant(
        seqcount,
        "no_retry",
        TORN_READ,
        "include/linux/seqlock.h: a reader must retry when read_seqcount_retry() says so",
        "reader that does not retry",
        "retries",
        read_section=read_without_retry,
    ),
    mutant(
        seqcount,
        "unserialised_writers",
        SEQCOUNT_CONCURRENT_WRITERS,
        "include/linux/seqlock.h: seqcount_t writers must be serialised (seqcount_LOCKNAME_t)",
        "the writer does not take the lock",
        "lock_waits",
        write=write_unlocked,
    ),
    mutant(
        seqcount,
        "end_twice",
        SEQCOUNT_END_WITHOUT_BEGIN,
        "include/linux/seqlock.h: write_seqcount_end() pairs with one write_seqcount_begin()",
        "an error path ends the write section twice",
        "writes",
        write=write_ended_twice,
    ),
)
register(SeqcountScenario())
