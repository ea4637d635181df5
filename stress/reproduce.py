"""A free-running finding made replayable: the last operations of every CPU, searched under control.

A free-running run cannot be replayed (the OS chose its interleaving), but
its program can be rebuilt: each CPU drew its operations from the seeded
generator, and the report says how many each one finished. The last K
operations of every CPU (K = 2, 4, 8, ..., and at last all of them) are a
program in which the race most likely lies; a short one first, and a long
one when the finding needs the state the run built (a fork long before,
counters that drifted over thousands of operations). The controlled search
(random, swarm and PCT strategies in turn, preemptions at any shared access)
explores it seed after seed (a few dozen per window, what is left of the
budget for the whole program) until the run's first finding is the same
check (for a hang, any hang: free-running, the watchdog can only see that
nothing moved for too long; under control every CPU blocked, a lock cycle or
a livelock is the proof of it). That run's report carries a program and a
schedule, so it replays deterministically, and it is shrunk. syzkaller's
reproducers are flaky; these are not.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from policies import get_scenario, load_module
from stress.hunt import plan
from stress.program import generate, mixes, to_json
from stress.runner import RunResult, UsageError, run, stop_if_interrupted

FIRST_WINDOW = 2
WHOLE = 1 << 40
SEEDS_PER_WINDOW = 60


@dataclass
class Reproduction:
    check: str
    window: int
    seed: int
    runs: int
    seconds: float
    result: RunResult


def suffix_program(report: dict, window: int) -> list:
    """Per CPU, the last `window` operations it ran (and the one it may have been in), in JSON form:
    from the report's program if it ran a given one, else drawn again from the seeded generator."""
    if isinstance(report.get("program"), list):
        return [p[max(0, len(p) - window) :] for p in report["program"]]
    for m in report.get("policy_modules", []):
        load_module(m)
    sc = get_scenario(report["scenario"])
    ops = sc.operations(sc.policy(report["policy"]))
    ncpus, seed = report["cpus"], report["seed"]
    done = report.get("ops_per_cpu") or []
    if len(done) != ncpus:
        raise UsageError("the report does not say how many operations each CPU ran")
    gen = report["knobs"].get("programs", "uniform")
    out = []
    for cpu, (n, mix) in enumerate(zip(done, mixes(ops, seed, ncpus, gen))):
        stream = generate(ops, seed, cpu, mix)
        steps = [next(stream) for _ in range(n + 1)]
        out.append(steps[max(0, n + 1 - window) :])
    return to_json(out, ops)


def same_finding(want: dict, got) -> bool:
    """Whether a controlled run's finding reproduces a free-running one's (a report's dict): the same
    check, or for a hang any proof that CPUs wait forever (all blocked, a livelock, a lock cycle)."""
    return got.check == want["check"] or want.get("kind") == "hang" and got.kind in ("hang", "deadlock")


def reproduce(
    report: dict, *, max_runs: int | None = None, max_seconds: float = 120.0, say: Callable[[str], None] | None = None
) -> Reproduction | None:
    """The first controlled run of a suffix program whose first finding is the report's: SEEDS_PER_WINDOW
    seeds for each window, and the rest of the budget for the whole program."""
    if report.get("schedule") is not None:
        raise UsageError("the report is of a controlled run: replay it (mmtorture replay)")
    if not report.get("findings"):
        raise UsageError("the report has no finding to reproduce")
    want = report["findings"][0]
    t0 = time.monotonic()
    runs = 0
    longest = max(len(p) for p in suffix_program(report, WHOLE))
    window = 0
    while window < longest:
        window = min(max(2 * window, FIRST_WINDOW), longest)
        program = suffix_program(report, window)
        if say:
            say(f"window {window}: " + " | ".join(f"cpu{c}: {len(p)} ops" for c, p in enumerate(program)))
        last = window == longest
        for seed in itertools.count() if last else range(SEEDS_PER_WINDOW):
            if (max_runs is not None and runs >= max_runs) or time.monotonic() - t0 > max_seconds:
                return None
            _, scheduler, _ = plan("mix", seed)  # the program is given: swarm's turn is the random strategy's
            r = stop_if_interrupted(
                run(
                    report["scenario"],
                    report["policy"],
                    cpus=report["cpus"],
                    seed=seed,
                    program=program,
                    scheduler=scheduler,
                    progress="off",
                    policy_modules=report.get("policy_modules", []),
                )
            )
            runs += 1
            if r.findings and same_finding(want, r.findings[0]):
                return Reproduction(r.findings[0].check, window, seed, runs, round(time.monotonic() - t0, 3), r)
    return None
