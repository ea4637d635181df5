"""Hunt: every mutant against the checkers, seed after seed, until the check it names catches it.

A mutant whose scenario gives it a litmus program is hunted on that program
(its race is rare in generated ones) with the random strategy: in a short
program the attacker must run through many scheduling points while the
victim waits, which uniform choices reach far more often than PCT's few
change points.  The others are hunted on generated programs with pct.
The first run of a mutant measures how many scheduling decisions its
program takes, and the following seeds draw PCT's change points from that
many steps (the k of the paper's bound), so small programs are searched
where their bugs are.

A catch counts only when the run's first finding is a check the mutant
names; a catch by another check is marked and fails the hunt (exit 1).
Each catch keeps its report and comes with the command that reproduces it.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from policies import get_scenario, scenarios
from stress.report import EXIT_FINDINGS, EXIT_OK, write_json
from stress.runner import run


@dataclass
class HuntRow:
    scenario: str
    mutant: str
    expected: list[str]
    caught: str | None
    seeds: int
    seed: int | None
    steps: int
    seconds: float
    scheduler: str = "pct"
    program: str = "generated"
    report: str | None = None
    command: str | None = None
    error: str | None = None
    run_report: dict | None = field(default=None, repr=False)

    @property
    def right_check(self) -> bool:
        return self.caught is not None and self.caught in self.expected

    def to_json(self) -> dict:
        d = asdict(self)
        del d["run_report"]
        return d | {"right_check": self.right_check}


def reproduce_command(scenario: str, policy: str, seed: int, scheduler: str, cpus: int, ops: int, depth: int,
                      k: int, litmus: bool, policy_modules=()) -> str:
    """The `mmtorture run` that makes the same run again (same program, same schedule)."""
    args = ["mmtorture", "run", "-s", scenario, "-p", policy, "--seed", str(seed), "--scheduler", scheduler]
    if litmus:
        args.append("--litmus")
    else:
        args += ["--cpus", str(cpus), "--ops", str(ops)]
    if scheduler == "pct":
        args += ["--pct-depth", str(depth), "--pct-steps", str(k)]
    for m in policy_modules:
        args += ["--policy-module", m]
    return shlex.join(args)


def hunt_one(scenario: str, policy: str, expect: tuple[str, ...], *, max_seeds: int = 1000, ops: int = 40,
             cpus: int = 2, first_seed: int = 0, depth: int = 3, policy_modules=(),
             program: list | None = None, scheduler: str = "pct", reports: str | None = None,
             want: str | None = None) -> HuntRow:
    """Seeds of `scheduler` until the mutant's run finds something (with `want`, until its first
    finding is that check); on `program` (its litmus test) if given, else on a generated
    program of `ops` operations per CPU."""
    t0 = time.monotonic()
    kind = "litmus" if program else "generated"
    k = 0
    steps = 0
    for n, seed in enumerate(range(first_seed, first_seed + max_seeds), 1):
        used_k = k
        r = run(scenario, policy, cpus=cpus, ops=0 if program else ops, seed=seed, scheduler=scheduler,
                pct_depth=depth, pct_steps=used_k, progress="off", policy_modules=policy_modules, program=program)
        sched = r.report.get("schedule") or {}
        steps = int(sched.get("steps", 0))
        k = k or max(steps, 1)
        row = HuntRow(scenario, policy, list(expect), None, n, seed, steps, 0.0, scheduler, kind, run_report=r.report)
        if r.exit_code not in (EXIT_OK, EXIT_FINDINGS):
            row.error = f"exit {r.exit_code}: " + ("; ".join(r.report.get("harness_errors") or [])
                                                   or (r.report.get("diverged") or {}).get("message", "interrupted"))
        elif not r.findings or want not in (None, r.findings[0].check):
            continue
        else:
            row.caught = r.findings[0].check
            row.command = reproduce_command(scenario, policy, seed, scheduler, cpus, ops, depth,
                                            int(sched.get("k", used_k)), bool(program),
                                            r.report.get("policy_modules", []))
            if reports:
                row.report = os.path.join(reports, f"{scenario}-{policy}.json")
                write_json(row.report, r.report)
        row.seconds = round(time.monotonic() - t0, 3)
        return row
    return HuntRow(scenario, policy, list(expect), None, max_seeds, None, steps,
                   round(time.monotonic() - t0, 3), scheduler, kind)


def hunt_mutant(scenario: str, policy: str, *, max_seeds: int = 1000, ops: int = 40, cpus: int = 2,
                depth: int = 3, policy_modules=(), reports: str | None = None, want: str | None = None) -> HuntRow:
    """One mutant searched as `hunt` searches it: random on its litmus program if it has
    one, else pct on generated programs."""
    sc = get_scenario(scenario)
    p = sc.policy(policy)
    litmus = sc.litmus(p)
    return hunt_one(sc.name, p.name, p.expect, max_seeds=max_seeds, ops=ops, cpus=len(litmus) if litmus else cpus,
                    depth=depth, policy_modules=policy_modules, program=litmus,
                    scheduler="random" if litmus else "pct", reports=reports, want=want)


def hunt(*, scenario: str | None = None, max_seeds: int = 1000, ops: int = 40, cpus: int = 2,
         depth: int = 3, say: Callable[[str], None] | None = None, policy_modules=(),
         reports: str | None = None) -> list[HuntRow]:
    rows = []
    for sc in scenarios().values():
        if scenario is not None and sc.name != scenario:
            continue
        for p in sc.mutants():
            row = hunt_mutant(sc.name, p.name, max_seeds=max_seeds, ops=ops, cpus=cpus, depth=depth,
                              policy_modules=policy_modules, reports=reports)
            rows.append(row)
            if say:
                say(format_row(row))
    return rows


HEADER = (f"{'MUTANT':<44} {'EXPECTED CHECK':<36} {'CAUGHT BY':<28} {'SEED':>5} {'TRIED':>5} {'STEPS':>6} "
          f"{'TIME':>7}  SEARCH")


def format_row(r: HuntRow) -> str:
    caught = "HARNESS ERROR" if r.error else r.caught or "NOT CAUGHT"
    if r.caught and not r.right_check:
        caught += " (WRONG CHECK)"
    line = (f"{r.scenario + '/' + r.mutant:<44} {' or '.join(r.expected):<36} {caught:<28} "
            f"{'-' if r.seed is None else r.seed:>5} {r.seeds:>5} {r.steps:>6} {r.seconds:>6.1f}s  "
            f"{r.scheduler} on {r.program}")
    if r.command:
        line += f"\n    reproduce: {r.command}" + (f"\n    report: {r.report}" if r.report else "")
    if r.error:
        line += f"\n    {r.error} at seed {r.seed}"
    return line
