"""Programs as data: per CPU, the list of operations with their arguments.

A CPU either draws its operations from a seeded generator or runs an
explicit program, so a failure of a controlled run is the pair (program,
schedule): both replayable, both shrinkable.  In JSON a program is a list,
per CPU, of [name, arg, ...].

Two generators.  `uniform` draws operations by the scenario's weights and
each argument uniform in its range.  `swarm` (Groce et al., "Swarm
Testing", ISSTA 2012) first draws, per seed, a configuration: a random
subset of the operations with random weights (for all CPUs, or for each
CPU its own, so that one CPU may only fault while another only unmaps), and
every argument focused on a few values shared by all CPUs (an address on a
window of a few neighbouring pages), so that the CPUs meet on the same
objects; a uniform mix spreads them over the whole space and omits nothing,
which hides the bugs that need one operation to be absent or frequent.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from policies import Operation

Step = tuple[int, tuple[int, ...]]
Program = list[list[Step]]


class ProgramError(ValueError):
    """A program that does not fit the scenario."""


def program_seed(seed: int, cpu: int) -> int:
    return (seed * 2_654_435_761 + cpu * 40_503 + 17) & 0xFFFFFFFFFFFF


GENERATORS = ("uniform", "swarm")
FOCUS_WIDTHS = (1, 2, 3, 4, 8, 16)


@dataclass(frozen=True)
class Mix:
    """What one CPU's generator draws from: weights per operation and, per argument, its values."""

    weights: tuple[float, ...]
    values: tuple[tuple[tuple[int, ...] | int, ...], ...]  # a tuple of values, or a bound: uniform

    def describe(self, ops: Sequence[Operation]) -> str:
        total = sum(self.weights)
        parts = []
        for op, w, vals in zip(ops, self.weights, self.values):
            if w:
                args = ",".join(f"{a.name}={_span(v)}" for a, v in zip(op.args, vals))
                parts.append(f"{op.name}{'(' + args + ')' if args else ''} {100 * w / total:.0f}%")
        return " ".join(parts)


def _span(v: tuple[int, ...] | int) -> str:
    if isinstance(v, int):
        return "*"
    s = sorted(set(v))
    if len(s) > 2 and s[-1] - s[0] == len(s) - 1:
        return f"{s[0]}..{s[-1]}"
    return "|".join(map(str, s))


def uniform_mix(ops: Sequence[Operation]) -> Mix:
    return Mix(tuple(float(op.weight) for op in ops), tuple(tuple(a.bound for a in op.args) for op in ops))


def swarm_mixes(ops: Sequence[Operation], seed: int, ncpus: int) -> list[Mix]:
    """The swarm configuration of a seed: one Mix per CPU."""
    rng = random.Random(f"swarm:{seed}")
    focus: dict[tuple[str, int], tuple[int, ...]] = {}

    def values(a) -> tuple[int, ...]:
        key = (a.name, a.bound)
        if key not in focus:
            if a.address:
                width = min(a.bound, rng.choice(FOCUS_WIDTHS))
                lo = rng.randrange(a.bound - width + 1)
                focus[key] = tuple(range(lo, lo + width))
            else:
                focus[key] = tuple(rng.sample(range(a.bound), min(a.bound, rng.choice((1, 2, 2, 3)))))
        return focus[key]

    def mix() -> Mix:
        chosen = [rng.random() < 0.5 for _ in ops]
        if not any(chosen):
            chosen[rng.randrange(len(ops))] = True
        weights = tuple(op.weight * 2 ** rng.uniform(-3, 3) if c else 0.0 for op, c in zip(ops, chosen))
        return Mix(weights, tuple(tuple(values(a) for a in op.args) for op in ops))

    if rng.random() < 0.5:
        return [mix()] * ncpus
    return [mix() for _ in range(ncpus)]


def mixes(ops: Sequence[Operation], seed: int, ncpus: int, generator: str = "uniform") -> list[Mix]:
    if generator == "swarm":
        return swarm_mixes(ops, seed, ncpus)
    return [uniform_mix(ops)] * ncpus


def generate(ops: Sequence[Operation], seed: int, cpu: int, mix: Mix | None = None) -> Iterator[Step]:
    """The endless stream of one CPU's operations, drawn by weight."""
    mix = mix or uniform_mix(ops)
    rng = random.Random(program_seed(seed, cpu))
    cum = list(accumulate(mix.weights))
    total = cum[-1]
    rand, randrange, choice = rng.random, rng.randrange, rng.choice
    values = mix.values
    while True:
        k = min(bisect(cum, rand() * total), len(cum) - 1)
        yield k, tuple(randrange(v) if isinstance(v, int) else choice(v) for v in values[k])


def generate_program(
    ops: Sequence[Operation], seed: int, ncpus: int, length: int, generator: str = "uniform"
) -> Program:
    out = []
    for cpu, mix in enumerate(mixes(ops, seed, ncpus, generator)):
        g = generate(ops, seed, cpu, mix)
        out.append([next(g) for _ in range(length)])
    return out


def to_json(program: Program, ops: Sequence[Operation]) -> list[list[list]]:
    return [[[ops[k].name, *args] for k, args in steps] for steps in program]


def from_json(data: object, ops: Sequence[Operation], ncpus: int | None = None) -> Program:
    """Parse and check a JSON program against the scenario's operations."""
    index = {op.name: i for i, op in enumerate(ops)}
    if not isinstance(data, list) or not all(isinstance(c, list) for c in data):
        raise ProgramError("a program is a list, per CPU, of [operation, arg, ...] lists")
    if ncpus is not None and len(data) != ncpus:
        raise ProgramError(f"the program is for {len(data)} CPUs, the run has {ncpus}")
    out: Program = []
    for cpu, steps in enumerate(data):
        prog = []
        for n, step in enumerate(steps):
            where = f"program: cpu {cpu} operation {n}"
            if not isinstance(step, list) or not step or not isinstance(step[0], str):
                raise ProgramError(f"{where}: expected [name, arg, ...], got {step!r}")
            k = index.get(step[0])
            if k is None:
                raise ProgramError(f"{where}: unknown operation {step[0]!r} (known: {', '.join(index)})")
            args = step[1:]
            spec = ops[k].args
            if len(args) != len(spec):
                raise ProgramError(f"{where}: {step[0]} takes {len(spec)} argument(s), got {len(args)}")
            for a, v in zip(spec, args):
                if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < a.bound:
                    raise ProgramError(f"{where}: {step[0]} argument {a.name} must be in 0..{a.bound - 1}, not {v!r}")
            prog.append((k, tuple(args)))
        out.append(prog)
    return out


def size(program: Program) -> int:
    return sum(len(p) for p in program)


def call_text(op: Operation, args: Sequence[int]) -> str:
    """One step of a program as a call: `replace(slot=0)`."""
    return f"{op.name}(" + ", ".join(f"{a.name}={v}" for a, v in zip(op.args, args)) + ")"


def describe(program: Program, ops: Sequence[Operation]) -> list[str]:
    """One line per CPU: `cpu0: get_put(slot=1) replace(slot=0)`."""
    lines = []
    for cpu, steps in enumerate(program):
        calls = [call_text(ops[k], args) for k, args in steps]
        lines.append(f"cpu{cpu}: " + (" ".join(calls) if calls else "(nothing)"))
    return lines
