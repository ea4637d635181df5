"""What a primitive needs of the CPU it runs on, of the machine and of a scheduler.

shm's primitives (locks, RCU, the page pool, refcounts, slabs) take the CPU
they run on and reach the machine through it.  Typed against `Cpu` and
`Machine` themselves, they and cpu.py and machine.py imported one another;
typed against these protocols, which import nothing of shm but the atomics
and the checks, the modules form layers: these protocols, the primitives,
the machine, the CPU.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from shm._atomic import Memory
from shm.checks import Check
from shm.segment import Segment


class Scheduler(Protocol):
    """Every place a CPU could be preempted, spins, or sleeps on a futex (shm/sched.py)."""

    name: str

    def attach(self, cpu: CpuLike) -> None:
        """Bind to the CPU this process is; called once before it runs."""

    def window(self, cpu: CpuLike, name: str) -> bool:
        """A preemption point in policy code; True if another CPU ran or a delay was injected."""

    def spin(
        self, cpu: CpuLike, attempt: int, mem: Memory | None = None, off: int = 0, seen: int = 0, bits: int = 32
    ) -> None:
        """One iteration of a spin loop (lock contention, waiting for a counter).

        When the loop waits for one word to change, it names it (`mem`, `off`,
        the value `seen`, 32 or 64 `bits`): a controlled scheduler then runs
        the CPU again only once the word differs, so a spin costs one switch."""

    def block(self, cpu: CpuLike, mem: Memory, off: int, expected: int, timeout: float | None) -> bool:
        """Sleep while the 32-bit word at off equals expected; False on timeout."""

    def op_boundary(self, cpu: CpuLike) -> None:
        """Between two operations of the CPU's program."""

    def begin(self, cpu: CpuLike) -> None:
        """The CPU starts running its program (after the start barrier)."""

    def exit(self, cpu: CpuLike) -> None:
        """The CPU has finished its program and leaves the machine."""


class MachineLike(Protocol):
    """The machine as a primitive sees it: its memories, RCU, and its wake-up buckets."""

    mem: Memory
    raw: Memory
    mems: list[Memory]
    seg: Segment
    segments: list[Segment]
    nslots: int
    rcu: Any
    srcu: Any

    @property
    def nowait_fail_ppm(self) -> int: ...

    def describe(self, addr: int) -> str: ...

    def wake_bucket(self, addr: int) -> int: ...

    def handle(self, cls: type, seg: int, off: int) -> Any: ...

    def stop_requested(self) -> bool: ...


class CpuLike(Protocol):
    """The CPU a primitive runs on: its identity, context counters, trace, findings and waits."""

    id: int
    owner_id: int
    mem: Memory
    hmem: Memory
    sched: Scheduler
    rng: random.Random
    held: list[int]
    preempt_count: int
    rcu_nesting: int
    irqs_disabled: int
    rcu_depth: int
    waiting_off: int
    wait_ns_off: int
    wait_since: int
    lock_waits_off: int
    lock_races_off: int
    _tseq: int
    _tbase: int
    _rcu_reader_off: int
    _gp_ctr_off: int

    @property
    def machine(self) -> MachineLike: ...

    def trace(self, event: int, arg: int = 0) -> None: ...

    def report(self, check: Check, message: str, **objects: Any) -> None: ...

    def might_sleep(self, what: str) -> None: ...

    def window(self, name: str) -> None: ...

    def rcu_reader_enter(self, mem: Any = None) -> None: ...

    def rcu_reader_exit(self, mem: Any = None) -> None: ...

    def local_irq_disable(self) -> None: ...

    def local_irq_enable(self) -> None: ...
