"""Programs as data: per CPU, the list of operations with their arguments.

A CPU either draws its operations from a seeded generator (by weight, each
argument uniform in its range) or runs an explicit program, so a failure of
a controlled run is the pair (program, schedule): both replayable, both
shrinkable.  In JSON a program is a list, per CPU, of [name, arg, ...].
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterator, Sequence
from itertools import accumulate

from policies import Operation

Step = tuple[int, tuple[int, ...]]
Program = list[list[Step]]


class ProgramError(ValueError):
    """A program that does not fit the scenario."""


def program_seed(seed: int, cpu: int) -> int:
    return (seed * 2_654_435_761 + cpu * 40_503 + 17) & 0xFFFFFFFFFFFF


def generate(ops: Sequence[Operation], seed: int, cpu: int) -> Iterator[Step]:
    """The endless stream of one CPU's operations, drawn by weight."""
    rng = random.Random(program_seed(seed, cpu))
    cum = list(accumulate(op.weight for op in ops))
    total = cum[-1]
    bounds = [tuple(a.bound for a in op.args) for op in ops]
    rand, randrange = rng.random, rng.randrange
    while True:
        k = bisect(cum, rand() * total)
        yield k, tuple(randrange(b) for b in bounds[k])


def generate_program(ops: Sequence[Operation], seed: int, ncpus: int, length: int) -> Program:
    out = []
    for cpu in range(ncpus):
        g = generate(ops, seed, cpu)
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
                    raise ProgramError(f"{where}: {step[0]} argument {a.name} must be in 0..{a.bound - 1},"
                                       f" not {v!r}")
            prog.append((k, tuple(args)))
        out.append(prog)
    return out


def size(program: Program) -> int:
    return sum(len(p) for p in program)


def describe(program: Program, ops: Sequence[Operation]) -> list[str]:
    """One line per CPU: `cpu0: get_put(slot=1) replace(slot=0)`."""
    lines = []
    for cpu, steps in enumerate(program):
        calls = []
        for k, args in steps:
            op = ops[k]
            calls.append(f"{op.name}(" + ", ".join(f"{a.name}={v}" for a, v in zip(op.args, args)) + ")")
        lines.append(f"cpu{cpu}: " + (" ".join(calls) if calls else "(nothing)"))
    return lines
