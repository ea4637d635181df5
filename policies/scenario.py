"""The one interface every mechanism presents to the harness.

A `Scenario` declares its state (regions of a shared segment), its operations
with weights, its quiescent checks, and its named policies.  A `Policy` is a
small frozen dataclass of operations (kernel names); a mutant is a policy
with a known bug that names the passage it reproduces and the finding kinds
it must produce, and sits right below its correct twin, built with
`dataclasses.replace`.  Like rcutorture's ops vectors: a missing operation
is None, not a flag.

The harness calls, in the runner (the boot CPU): setup, then after the CPUs
have stopped: sweep, teardown.  In every process: attach.  On each CPU: the
operations' `run(world, *args)`; the arguments are drawn by the harness (or
come from a recorded program), never by the operation itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shm import (
    Cpu,
    Layout,
    Machine,
    Mutex,
    PercpuRef,
    Refcount,
    Region,
    Rwsem,
    Segment,
    Seqcount,
    Spinlock,
)
from shm.checks import Check, get_check


@dataclass(frozen=True)
class Policy:
    """A named variant of a scenario.  Subclasses add the operations that vary.

    A mutant names the check it must trip first (`expect`, check ids; a
    second one only where the bug shows either way, said in its docstring),
    the passage it reproduces (`source`), and what shows that its correct
    twin went through the racy path the mutant breaks (`witness`: a scenario
    counter, `window:NAME` for a window where a preemption or delay landed,
    or `op:NAME` for an operation that ran)."""

    name: str
    doc: str = ""
    mutant: bool = False
    expect: tuple[str, ...] = ()
    source: str = ""
    twin: str = ""
    witness: str = ""

    def __post_init__(self) -> None:
        for c in self.expect:
            get_check(c)
        if self.mutant and not self.expect:
            raise ValueError(f"mutant {self.name} must say which check it trips")
        if self.mutant and not self.source:
            raise ValueError(f"mutant {self.name} must name the passage it reproduces")
        if self.mutant and not self.witness:
            raise ValueError(f"mutant {self.name} must say what shows its twin reached the race (witness)")

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(get_check(c) for c in self.expect)

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """A scenario's policy class declares its operations as fields (w.policy.lookup...)."""


P = TypeVar("P", bound=Policy)


def mutant(
    correct: P, name: str, expect: tuple[Check, ...] | Check, source: str, doc: str, witness: str, **ops: Any
) -> P:
    """A deliberately broken twin of `correct`, differing only in `ops`."""
    checks = (expect,) if isinstance(expect, Check) else expect
    return dataclasses.replace(
        correct,
        name=name,
        mutant=True,
        expect=tuple(c.id for c in checks),
        source=source,
        doc=doc,
        twin=correct.name,
        witness=witness,
        **ops,
    )


@dataclass(frozen=True)
class Arg:
    """One argument of an operation: an integer in range(bound) (a slot, a lock, an address).

    An `address` (a page number, an offset) is one of many neighbouring values: swarm programs
    focus it on a small window so that CPUs meet on the same pages and tables; any other
    argument is focused on a few of its values."""

    name: str
    bound: int
    address: bool = False

    def __post_init__(self) -> None:
        if self.bound < 1:
            raise ValueError(f"argument {self.name} needs a bound of at least 1")


@dataclass(frozen=True)
class Operation:
    """What a CPU can do: `run(world, *args)`, chosen by `weight`, with integer `args`.

    Arguments are data so that a program (per CPU, a list of operations with
    their arguments) can be generated, recorded, replayed and shrunk."""

    name: str
    weight: int
    run: Callable[..., Any]
    args: tuple[Arg, ...] = ()


@dataclass(frozen=True)
class Needs:
    """What a scenario needs of the machine."""

    pool_pages: int = 256
    page_size: int = 64
    srcu_domains: int = 1
    nowait_fail_rate: float = 0.0  # when the knob is not given: this scenario injects failures


class Scenario:
    name: str = ""
    doc: str = ""
    policies: tuple[Any, ...] = ()
    counters: tuple[str, ...] = ()
    needs: Needs = Needs()

    def regions(self, ncpus: int) -> list[Region]:
        return []

    def layout(self, ncpus: int) -> Layout:
        """The state segment's layout; its digest covers the scenario and the CPU count."""
        return Layout(f"state:{self.name}", self.regions(ncpus), {"scenario": self.name, "ncpus": ncpus})

    def operations(self, policy: Any) -> tuple[Operation, ...]:
        """The scenario's operations as `policy` (its own Policy subclass) implements them."""
        raise NotImplementedError

    def setup(self, w: World) -> None:
        """Initial state, built once by the boot CPU before the CPUs start."""

    def attach(self, w: World) -> None:
        """Per-process handles (locks, refcounts) onto the shared state."""

    def sweep(self, w: World) -> None:
        """Quiescent checks, all CPUs stopped; report through w.cpu.report."""

    def teardown(self, w: World) -> None:
        """Give back what the scenario holds, so that the leak sweep sees an empty pool."""

    def stat_text(self, counters: dict[str, int]) -> str:
        """Extra text for the periodic stat line."""
        return ""

    def gauges(self, w: World) -> dict[str, int]:
        """Quantities the runner samples while the CPUs run (`--gauge-interval`) and once more at
        the quiescent point (page-table bytes, tables held): read from the outside with plain
        loads, taking no lock and no part in any schedule, so a sample may be torn."""
        return {}

    def litmus(self, policy: Policy) -> list | None:
        """A small program (per CPU, [operation, arg...]) in which `policy`'s bug is reachable.

        Like a litmus test: the program is fixed and the controlled scheduler
        searches its interleavings.  For a mutant whose race a generated
        program reaches too rarely; its correct twin must pass the same
        program under every schedule."""
        return None

    # -- registry helpers -------------------------------------------------
    def policy(self, name: str | None) -> Policy:
        if name is None:
            return self.default_policy()
        for p in self.policies:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.policies)
        raise LookupError(f"unknown policy {name!r} for scenario {self.name} (known: {known})")

    def default_policy(self) -> Policy:
        for p in self.policies:
            if not p.mutant:
                return p
        raise LookupError(f"scenario {self.name} has no correct policy")

    def correct_policies(self) -> list[Policy]:
        return [p for p in self.policies if not p.mutant]

    def mutants(self) -> list[Policy]:
        return [p for p in self.policies if p.mutant]


@dataclass
class World:
    """What policy code sees in one process: this CPU, the machine, the scenario's state."""

    machine: Machine
    cpu: Cpu
    scenario: Scenario
    policy: Any  # the scenario's own Policy subclass
    seg: Segment
    ncpus: int
    counts: list[int] = field(default_factory=list)

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """A scenario attaches its per-process handles in attach() (w.mm, w.locks...)."""

        def __setattr__(self, name: str, value: Any) -> None: ...

    def __post_init__(self) -> None:
        self.seg_index = self.machine.segments.index(self.seg)
        self.mem = self.seg.mem
        self.rcu = self.machine.rcu
        self.srcu = self.machine.srcu
        self.pool = self.machine.pool
        self.counter_index = {n: i for i, n in enumerate(self.scenario.counters)}
        self.counts = [0] * len(self.scenario.counters)
        self.cpu.ctx = self

    @property
    def rng(self):
        return self.cpu.rng

    def count(self, name: str, n: int = 1) -> None:
        self.counts[self.counter_index[name]] += n

    def view(self, region: str):
        return self.seg.view(region)

    def offset(self, region: str, index: int = 0, field: str | None = None) -> int:
        return self.seg.layout.offset(region, index, field)

    def _handle(self, cls, region: str, index: int, field: str | None):
        return self.machine.handle(cls, self.seg_index, self.offset(region, index, field))

    def spinlock(self, region: str, index: int = 0, field: str | None = None) -> Spinlock:
        return self._handle(Spinlock, region, index, field)

    def mutex(self, region: str, index: int = 0, field: str | None = None) -> Mutex:
        return self._handle(Mutex, region, index, field)

    def rwsem(self, region: str, index: int = 0, field: str | None = None) -> Rwsem:
        return self._handle(Rwsem, region, index, field)

    def seqcount(self, region: str, index: int = 0, field: str | None = None) -> Seqcount:
        return self._handle(Seqcount, region, index, field)

    def refcount(self, region: str, index: int = 0, field: str | None = None) -> Refcount:
        return self._handle(Refcount, region, index, field)

    def percpu_ref(self, region: str, index: int = 0, field: str | None = None) -> PercpuRef:
        return self._handle(PercpuRef, region, index, field)
