"""Hunt: every mutant against the checkers, under pct, seed after seed until it is caught.

A mutant whose scenario gives it a litmus program is hunted on that program
(its race is rare in generated ones) with the random strategy: in a short
program the attacker must run through many scheduling points while the
victim waits, which uniform choices reach far more often than PCT's few
change points.  The others are hunted on generated programs with pct.
The first run of a mutant measures how many scheduling decisions its
program takes, and the following seeds draw PCT's change points from that
many steps (the k of the paper's bound), so small programs are searched
where their bugs are.  A row per mutant: expected kind, caught kind, seeds
tried, the schedule's steps, wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from policies import scenarios
from stress.runner import run


@dataclass
class HuntRow:
    scenario: str
    mutant: str
    expected: str
    caught: str | None
    seeds: int
    seed: int | None
    steps: int
    seconds: float
    scheduler: str = "pct"
    program: str = "generated"

    def to_json(self) -> dict:
        return asdict(self)


def hunt_one(scenario: str, policy: str, expect: tuple[str, ...], *, max_seeds: int = 1000, ops: int = 40,
             cpus: int = 2, first_seed: int = 0, depth: int = 3, policy_modules=(),
             program: list | None = None, scheduler: str = "pct") -> HuntRow:
    """Seeds of `scheduler` until the mutant is caught; on `program` (its litmus test) if
    given, else on a generated program of `ops` operations per CPU."""
    t0 = time.monotonic()
    kind = "litmus" if program else "generated"
    k = 0
    steps = 0
    for n, seed in enumerate(range(first_seed, first_seed + max_seeds), 1):
        r = run(scenario, policy, cpus=cpus, ops=0 if program else ops, seed=seed, scheduler=scheduler,
                pct_depth=depth, pct_steps=k, progress="off", policy_modules=policy_modules, program=program)
        sched = r.report.get("schedule") or {}
        steps = int(sched.get("steps", 0))
        k = k or max(steps, 1)
        kinds = [f.kind for f in r.findings]
        hit = next((x for x in kinds if x in expect), None)
        if hit or kinds:
            return HuntRow(scenario, policy, " or ".join(expect), hit or kinds[0], n, seed, steps,
                           round(time.monotonic() - t0, 3), scheduler, kind)
    return HuntRow(scenario, policy, " or ".join(expect), None, max_seeds, None, steps,
                   round(time.monotonic() - t0, 3), scheduler, kind)


def hunt(*, scenario: str | None = None, max_seeds: int = 1000, ops: int = 40, cpus: int = 2,
         depth: int = 3, say: Callable[[str], None] | None = None, policy_modules=()) -> list[HuntRow]:
    rows = []
    for sc in scenarios().values():
        if scenario is not None and sc.name != scenario:
            continue
        for p in sc.mutants():
            litmus = sc.litmus(p)
            row = hunt_one(sc.name, p.name, p.expect, max_seeds=max_seeds, ops=ops,
                           cpus=len(litmus) if litmus else cpus, depth=depth, policy_modules=policy_modules,
                           program=litmus, scheduler="random" if litmus else "pct")
            rows.append(row)
            if say:
                say(format_row(row))
    return rows


HEADER = (f"{'MUTANT':<44} {'EXPECTED':<28} {'CAUGHT':<16} {'SEEDS':>5} {'STEPS':>6} {'TIME':>7}"
          f"  {'SEARCH'}")


def format_row(r: HuntRow) -> str:
    caught = r.caught or "NOT CAUGHT"
    if r.caught and r.caught not in r.expected.split(" or "):
        caught += "?"
    return (f"{r.scenario + '/' + r.mutant:<44} {r.expected:<28} {caught:<16} {r.seeds:>5} {r.steps:>6} "
            f"{r.seconds:>6.1f}s  {r.scheduler} on {r.program}")
