"""Hunt: every mutant against the checkers, seed after seed, until the check it names catches it.

Blind by default: no litmus program, no window added for a mutant.  Each
mutant is searched by a strategy:

- random: uniform programs, the random controlled strategy (a per-seed coin
  at every window, sparse preemptions at any shared access, and on half the
  seeds a preempted CPU held while the others run a few operations);
- swarm: swarm programs (per seed a subset of operations with random
  weights, arguments focused where CPUs meet) of 600 operations per CPU,
  under the random strategy;
- pct: uniform programs under PCT over accesses; the first run measures how
  many accesses its program makes and later seeds draw the change points
  from that many (the k of the paper's bound);
- mix (the default): seed n runs random, swarm and pct in turn, so one
  budget covers the three;
- free: free-running with delays injected at sampled accesses, one run of
  the remaining seconds per seed;
- pmc: communication-directed (stress.pmc): a profiling run, then
  preemptions just before reads of words another CPU writes.

`--litmus` hunts a mutant that has a litmus program on it instead (random),
as a regression test.  Budgets: seeds and seconds per mutant, whichever ends
first.  A catch counts only when the run's first finding is a check the
mutant names: a run whose first finding is another check is noted in the
row (the check and its seed) and the search goes on, since a mutant proves
its own check or nothing.  Each catch keeps its report and comes with the
command that reproduces it.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from policies import get_scenario, scenarios
from stress.report import EXIT_FINDINGS, EXIT_OK, write_json
from stress.runner import run, stop_if_interrupted
from stress.schedulers.free import DELAY_EVERY

STRATEGIES = ("mix", "random", "swarm", "pct", "free", "pmc")
MIX = ("random", "swarm", "pct")
PMC_TRIES = 8
PMC_OPS = 12
FREE_RUN_S = 5.0
OPS = 40
SWARM_OPS = 600


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
    strategy: str = "mix"
    others: dict[str, int] = field(default_factory=dict)  # another check found first: its first seed
    run_report: dict | None = field(default=None, repr=False)

    @property
    def right_check(self) -> bool:
        return self.caught is not None and self.caught in self.expected

    def to_json(self) -> dict:
        d = asdict(self)
        del d["run_report"]
        return d | {"right_check": self.right_check}


def plan(strategy: str, n: int) -> tuple[str, str, str]:
    """The (strategy, scheduler, program generator) of the n-th seed of a hunt by `strategy`."""
    name = MIX[n % len(MIX)] if strategy == "mix" else strategy
    return (name, "random", "swarm") if name == "swarm" else (name, name, "uniform")


def ops_for(name: str, ops: int | None) -> int:
    """Operations per CPU of a seed of strategy `name`: `ops` if given, else OPS, or SWARM_OPS
    for swarm programs.  A swarm configuration narrows the operations and their arguments so
    that CPUs meet, but a race on state the program builds first (a VMA mapped in the focus,
    then faulted, then unmapped under a reader) needs a long program: a configuration that can
    catch reuse_before_flush does in about 1 run in 6 at 200 operations per CPU and in nearly
    every run from 600 on (1000 is no better), so the chance per second grows sixfold for
    three times the work."""
    return ops or (SWARM_OPS if name == "swarm" else OPS)


def seed_knobs(strategy: str, n: int, ops: int | None = None, seconds: float = FREE_RUN_S) -> dict:
    """The run knobs of the n-th seed of a hunt by `strategy` (a generated program): what hunt
    runs, and what a campaign's run gives `mmtorture run`."""
    name, scheduler, gen = plan(strategy, n)
    knobs: dict = {"scheduler": scheduler, "programs": gen}
    if scheduler == "free":
        knobs.update(duration=seconds, ops=0, delay_every=DELAY_EVERY)
    else:
        knobs.update(ops=ops_for(name, ops))
    return knobs


def cpus_for(name: str, n: int, cpus: int) -> int:
    """CPUs of the n-th seed of a hunt: `cpus`, or for a swarm configuration one more on every
    other seed.  Swarm varies what a run is made of, and the number of threads is part of it:
    some races need three (a fork write-protects a page while one thread still writes it
    through its TLB and another write-faults on it)."""
    return cpus + n % 2 if name == "swarm" else cpus


def reproduce_command(
    scenario: str,
    policy: str,
    seed: int,
    scheduler: str,
    cpus: int,
    ops: int,
    depth: int,
    k: int,
    litmus: bool,
    policy_modules=(),
    programs: str = "uniform",
) -> str:
    """The `mmtorture run` that makes the same run again (same program, same schedule)."""
    args = ["mmtorture", "run", "-s", scenario, "-p", policy, "--seed", str(seed), "--scheduler", scheduler]
    if litmus:
        args.append("--litmus")
    else:
        args += ["--cpus", str(cpus), "--ops", str(ops)]
        if programs != "uniform":
            args += ["--programs", programs]
    if scheduler == "pct":
        args += ["--pct-depth", str(depth), "--pct-steps", str(k)]
    for m in policy_modules:
        args += ["--policy-module", m]
    return shlex.join(args)


def _error(r) -> str:
    return f"exit {r.exit_code}: " + (
        "; ".join(r.report.get("harness_errors") or [])
        or (r.report.get("diverged") or {}).get("message", "interrupted")
    )


def hunt_one(
    scenario: str,
    policy: str,
    expect: tuple[str, ...],
    *,
    max_seeds: int = 1000,
    ops: int | None = None,
    cpus: int = 2,
    first_seed: int = 0,
    depth: int = 3,
    policy_modules=(),
    program: list | None = None,
    strategy: str = "mix",
    reports: str | None = None,
    want: str | None = None,
    max_seconds: float | None = None,
) -> HuntRow:
    """Seeds of `strategy` until a run's first finding is a check of `expect` (with `want`, that
    check), within `max_seeds` and `max_seconds`; on `program` (a litmus test) if given, else
    on generated programs of `ops` operations per CPU (by default as `ops_for` says)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    t0 = time.monotonic()
    kind = "litmus" if program else "generated"
    k = 0
    steps = 0
    n = 0
    name, scheduler = strategy, strategy
    accept = (want,) if want else tuple(expect)
    others: dict[str, int] = {}
    for n, seed in enumerate(range(first_seed, first_seed + max_seeds), 1):
        left = None if max_seconds is None else max_seconds - (time.monotonic() - t0)
        if left is not None and left <= 0:
            n -= 1
            break
        name, scheduler, gen = plan(strategy, seed - first_seed)
        ncpus = cpus if program else cpus_for(name, seed - first_seed, cpus)
        cmd = None
        if name == "pmc":
            r = _pmc_seed(scenario, policy, seed, ncpus, policy_modules, accept)
        else:
            knobs = seed_knobs(strategy, seed - first_seed, ops, min(FREE_RUN_S, max(0.5, left or FREE_RUN_S)))
            if scheduler != "free":
                knobs.update(ops=0 if program else knobs["ops"], pct_depth=depth, pct_steps=k)
            used_k = k
            r = stop_if_interrupted(
                run(
                    scenario,
                    policy,
                    cpus=ncpus,
                    seed=seed,
                    progress="off",
                    policy_modules=policy_modules,
                    program=program,
                    **knobs,
                )
            )
            s = r.report.get("schedule") or {}
            steps = int(s.get("steps", 0))
            if scheduler == "pct":
                k = k or max(int(s.get("accesses", 0)), 1)
            cmd = reproduce_command(
                scenario,
                policy,
                seed,
                scheduler,
                ncpus,
                ops_for(name, ops),
                depth,
                int(s.get("k", used_k)),
                bool(program),
                r.report.get("policy_modules", []),
                gen,
            )
        row = HuntRow(
            scenario,
            policy,
            list(expect),
            None,
            n,
            seed,
            steps,
            0.0,
            scheduler,
            kind,
            strategy=name,
            others=others,
            run_report=r.report,
        )
        if r.exit_code not in (EXIT_OK, EXIT_FINDINGS):
            row.error = _error(r)
        elif not r.findings:
            continue
        elif r.findings[0].check not in accept:
            others.setdefault(r.findings[0].check, seed)
            continue
        else:
            row.caught = r.findings[0].check
            if reports:
                row.report = os.path.join(reports, f"{scenario}-{policy}.json")
                write_json(row.report, r.report)
            row.command = cmd or (
                f"mmtorture replay {shlex.quote(row.report)}"
                if row.report
                else "mmtorture replay REPORT (its program and schedule: keep it with --reports)"
            )
        row.seconds = round(time.monotonic() - t0, 3)
        return row
    return HuntRow(
        scenario,
        policy,
        list(expect),
        None,
        n,
        None,
        steps,
        round(time.monotonic() - t0, 3),
        scheduler,
        kind,
        strategy=strategy,
        others=others,
    )


def _pmc_seed(scenario: str, policy: str, seed: int, cpus: int, policy_modules, accept: tuple[str, ...]):
    """One program, profiled, then up to PMC_TRIES channel schedules: the first run that finds."""
    import random

    from policies import get_scenario
    from stress import pmc
    from stress.program import generate_program, to_json

    sc = get_scenario(scenario)
    ops = sc.operations(sc.policy(policy))
    prog = generate_program(ops, seed, cpus, PMC_OPS, "swarm")
    js = to_json(prog, ops)
    r = stop_if_interrupted(
        run(
            scenario,
            policy,
            cpus=cpus,
            seed=seed,
            program=js,
            schedule=pmc.turns(js),
            strict=False,
            profile=True,
            progress="off",
            policy_modules=policy_modules,
        )
    )
    if r.findings or r.exit_code not in (EXIT_OK, EXIT_FINDINGS) or not r.profile:
        return r
    profile = r.profile
    chans = pmc.channels(profile, [[k for k, _ in c] for c in prog])
    rng = random.Random(seed)
    for _ in range(PMC_TRIES):
        ch = pmc.pick(chans, rng)
        if ch is None:
            break
        rr = stop_if_interrupted(
            run(
                scenario,
                policy,
                cpus=cpus,
                seed=seed,
                program=js,
                schedule=pmc.schedule(js, profile, ch, rng.random() < 0.5),
                strict=False,
                progress="off",
                policy_modules=policy_modules,
            )
        )
        if rr.findings and rr.findings[0].check in accept or rr.exit_code not in (EXIT_OK, EXIT_FINDINGS):
            return rr
        if rr.findings and not r.findings:
            r = rr  # another check: the hunt notes it and tries the other channels
    return r


def hunt_mutant(
    scenario: str,
    policy: str,
    *,
    max_seeds: int = 1000,
    ops: int | None = None,
    cpus: int = 2,
    depth: int = 3,
    policy_modules=(),
    reports: str | None = None,
    want: str | None = None,
    strategy: str = "mix",
    litmus: bool = False,
    max_seconds: float | None = None,
) -> HuntRow:
    """One mutant searched as `hunt` searches it: blind by `strategy`, or with `litmus` on its
    litmus program if it has one (random)."""
    sc = get_scenario(scenario)
    p = sc.policy(policy)
    prog = sc.litmus(p) if litmus else None
    return hunt_one(
        sc.name,
        p.name,
        p.expect,
        max_seeds=max_seeds,
        ops=ops,
        cpus=len(prog) if prog else cpus,
        depth=depth,
        policy_modules=policy_modules,
        program=prog,
        strategy="random" if prog else strategy,
        reports=reports,
        want=want,
        max_seconds=max_seconds,
    )


def hunt(
    *,
    scenario: str | None = None,
    max_seeds: int = 1000,
    ops: int | None = None,
    cpus: int = 2,
    depth: int = 3,
    say: Callable[[str], None] | None = None,
    policy_modules=(),
    reports: str | None = None,
    strategy: str = "mix",
    litmus: bool = False,
    max_seconds: float | None = None,
    rows: list[HuntRow] | None = None,
) -> list[HuntRow]:
    """Every mutant (of `scenario`), one after another, each row appended to `rows` as it ends
    (what a signal that stops the hunt leaves)."""
    rows = [] if rows is None else rows
    for sc in scenarios().values():
        if scenario is not None and sc.name != scenario:
            continue
        for p in sc.mutants():
            row = hunt_mutant(
                sc.name,
                p.name,
                max_seeds=max_seeds,
                ops=ops,
                cpus=cpus,
                depth=depth,
                policy_modules=policy_modules,
                reports=reports,
                strategy=strategy,
                litmus=litmus,
                max_seconds=max_seconds,
            )
            rows.append(row)
            if say:
                say(format_row(row))
    return rows


HEADER = (
    f"{'MUTANT':<44} {'EXPECTED CHECK':<36} {'CAUGHT BY':<28} {'SEED':>5} {'TRIED':>5} {'STEPS':>6} {'TIME':>7}  SEARCH"
)


def format_row(r: HuntRow) -> str:
    caught = "HARNESS ERROR" if r.error else r.caught or "NOT CAUGHT"
    line = (
        f"{r.scenario + '/' + r.mutant:<44} {' or '.join(r.expected):<36} {caught:<28} "
        f"{'-' if r.seed is None else r.seed:>5} {r.seeds:>5} {r.steps:>6} {r.seconds:>6.1f}s  "
        f"{r.strategy} on {r.program}"
    )
    if r.command:
        line += f"\n    reproduce: {r.command}" + (f"\n    report: {r.report}" if r.report else "")
    if r.error:
        line += f"\n    {r.error} at seed {r.seed}"
    if r.others:
        line += "\n    found first by another check, search went on: " + ", ".join(
            f"{c} (seed {s})" for c, s in r.others.items()
        )
    return line
