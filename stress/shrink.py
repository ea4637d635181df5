"""Shrinking a failing (program, schedule) to a smaller one that trips the same check.

Operations and preemptions shrink together.  A preemption is anchored at
(operation index, point within the operation) of the CPU that takes it, so
removing operations of a CPU drops the preemptions inside them and renumbers
the later ones; every candidate is replayed leniently (a preemption that no
longer fits goes to the nearest runnable CPU), and a candidate that still
fails is replaced by what it actually ran: the operations it executed and
the preemptions it took.  Passes, until nothing changes (delta debugging,
Zeller's ddmin, chunk sizes halving): remove operations, remove preemptions
(one CPU's chunks; preemptions before operations
when there are more of them, as a dense access-level schedule has, since
each one pins the operations around it), move preemptions to simpler
points (the operation's end, an earlier window or access), lower arguments
to 0, and when few are left, remove any two elements at once (two
preemptions, an operation and a preemption, two operations).  A candidate
tried before is not run again.  The result is replayed strictly once and
written as a new report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stress.replay import replay
from stress.runner import RunResult, UsageError, stop_if_interrupted
from stress.schedulers.state import AT_BOUNDARY

Devs = list[list[list[int]]]
PAIR_LIMIT = 40


@dataclass
class Candidate:
    program: list[list[list]]
    first: int
    deviations: Devs

    @property
    def ops(self) -> int:
        return sum(len(p) for p in self.program)

    @property
    def preemptions(self) -> int:
        return sum(len(d) for d in self.deviations)

    def schedule(self) -> dict:
        return {"first": self.first, "deviations": self.deviations}

    def without_ops(self, cpu: int, start: int, n: int) -> Candidate:
        prog = [list(p) for p in self.program]
        del prog[cpu][start : start + n]
        devs = [list(d) for d in self.deviations]
        if cpu < len(devs):
            devs[cpu] = [
                [op - n if op >= start + n else op, pt, t] for op, pt, t in devs[cpu] if not start <= op < start + n
            ]
        return Candidate(prog, self.first, devs)

    def without_devs(self, cpu: int, start: int, n: int) -> Candidate:
        devs = [list(d) for d in self.deviations]
        del devs[cpu][start : start + n]
        return Candidate(self.program, self.first, devs)


def _without(c: Candidate, *elements: tuple[str, int, int]) -> Candidate:
    """c without the given preemptions and operations ("dev" or "op", cpu, index): preemptions
    first, by index, then operations from the last, so that each index still names its element."""
    devs = {(cpu, i) for kind, cpu, i in elements if kind == "dev"}
    c = Candidate(
        c.program,
        c.first,
        [[d for j, d in enumerate(lst) if (cpu, j) not in devs] for cpu, lst in enumerate(c.deviations)],
    )
    for _, cpu, i in sorted((e for e in elements if e[0] == "op"), key=lambda e: -e[2]):
        c = c.without_ops(cpu, i, 1)
    return c


@dataclass
class ShrinkResult:
    check: str
    before: Candidate
    after: Candidate
    runs: int
    seconds: float
    final: RunResult
    log: list[str] = field(default_factory=list)

    def summary(self) -> str:
        b, a = self.before, self.after
        per = lambda c: "+".join(str(len(p)) for p in c.program)  # noqa: E731
        return (
            f"shrunk [{self.check}]: program {b.ops} ops ({per(b)}) -> {a.ops} ({per(a)}), "
            f"preemptions {b.preemptions} -> {a.preemptions}, {self.runs} runs in {self.seconds:.1f}s"
        )


class Shrinker:
    def __init__(
        self,
        report: dict,
        check: str | None = None,
        max_runs: int = 2000,
        say: Callable[[str], None] | None = None,
        policy_modules=(),
    ):
        self.report = report
        checks = [f["check"] for f in report["findings"]]
        if not checks:
            raise UsageError("the report has no finding to shrink")
        if check is not None and check not in checks:
            raise UsageError(f"the report has no {check} finding (it has: {', '.join(sorted(set(checks)))})")
        self.check = check or checks[0]
        self.max_runs = max_runs
        self.runs = 0
        self.say = say or (lambda s: None)
        self.policy_modules = policy_modules
        self.tried: dict[str, Candidate | None] = {}

    def _try(self, c: Candidate) -> Candidate | None:
        """The candidate as it ran, if it still trips the check; else None (a candidate tried
        before is not run again)."""
        key = json.dumps([c.program, c.first, c.deviations])
        if key in self.tried:
            return self.tried[key]
        self.tried[key] = got = self._run(c)
        return got

    def _run(self, c: Candidate) -> Candidate | None:
        self.runs += 1
        r = stop_if_interrupted(
            replay(
                self.report, strict=False, program=c.program, schedule=c.schedule(), policy_modules=self.policy_modules
            )
        )
        if r.exit_code not in (0, 1) or self.check not in r.checks:
            return None
        s = r.report["schedule"]
        return Candidate(r.report["program"], s["first"], s["deviations"])

    def _budget(self) -> bool:
        return self.runs < self.max_runs

    def _ddmin(
        self,
        c: Candidate,
        lists: Callable[[Candidate], list[list]],
        remove: Callable[[Candidate, int, int, int], Candidate],
        size: Callable[[Candidate], tuple[int, int]],
    ) -> Candidate:
        """Remove chunks (halving in size) of each CPU's list while the failure stays."""
        for cpu in range(len(lists(c))):
            n = max(1, len(lists(c)[cpu]) // 2)
            while n >= 1 and self._budget():
                i = 0
                while i < len(lists(c)[cpu]) and self._budget():
                    got = self._try(remove(c, cpu, i, n))
                    if got is not None and size(got) < size(c):
                        c = got
                    else:
                        i += n
                n //= 2
        return c

    def _pass_ops(self, c: Candidate) -> Candidate:
        return self._ddmin(c, lambda x: x.program, Candidate.without_ops, lambda x: (x.ops, x.preemptions))

    def _pass_devs(self, c: Candidate) -> Candidate:
        return self._ddmin(c, lambda x: x.deviations, Candidate.without_devs, lambda x: (x.preemptions, x.ops))

    def _pass_pairs(self, c: Candidate) -> Candidate:
        """Remove two elements at once, operations and preemptions alike: a CPU handed away and
        the hand back, or an operation and the preemption that only served it, are often only
        removable together, and a pass that removes one at a time stops there.  Few are left by
        then, so all pairs (but a preemption with its own operation, which goes with it anyway),
        up to the first that works: the passes of one element go on from there."""
        if c.ops + c.preemptions > PAIR_LIMIT:
            return c
        where = [("dev", cpu, i) for cpu, d in enumerate(c.deviations) for i in range(len(d))]
        where += [("op", cpu, i) for cpu, p in enumerate(c.program) for i in range(len(p))]
        for x, a in enumerate(where):
            for b in where[x + 1 :]:
                if not self._budget():
                    return c
                if a[0] == "dev" and b[0] == "op" and a[1] == b[1] and c.deviations[a[1]][a[2]][0] == b[2]:
                    continue
                got = self._try(_without(c, a, b))
                if got is not None and (got.ops + got.preemptions, got.ops) < (c.ops + c.preemptions, c.ops):
                    return got
        return c

    def _pass_points(self, c: Candidate) -> Candidate:
        """Move each preemption to a simpler point of its operation: its end, an earlier window, an
        earlier access.  A point that no longer depends on how long the operations before it ran
        lets the next pass remove them."""
        for cpu in range(len(c.deviations)):
            for i in range(len(c.deviations[cpu])):
                if not self._budget() or i >= len(c.deviations[cpu]):
                    break
                op, point, target = c.deviations[cpu][i]
                simpler = [AT_BOUNDARY] if point != AT_BOUNDARY else []
                if point < AT_BOUNDARY:
                    simpler += list(range(AT_BOUNDARY - 1, point, -1))
                elif point > 1:
                    simpler += [point // 2, point - 1]
                for p in simpler:
                    devs = [list(d) for d in c.deviations]
                    devs[cpu] = list(devs[cpu])
                    devs[cpu][i] = [op, p, target]
                    got = self._try(Candidate(c.program, c.first, devs))
                    if got is not None and (got.ops, got.preemptions) <= (c.ops, c.preemptions):
                        c = got
                        break
        return c

    def _pass_args(self, c: Candidate) -> Candidate:
        for cpu, steps in enumerate(c.program):
            for i in range(len(steps)):
                if not self._budget() or i >= len(c.program[cpu]):
                    break
                step = c.program[cpu][i]
                if not any(step[1:]):
                    continue
                prog = [list(p) for p in c.program]
                prog[cpu][i] = [step[0]] + [0] * (len(step) - 1)
                got = self._try(Candidate(prog, c.first, c.deviations))
                if got is not None and got.ops <= c.ops and got.preemptions <= c.preemptions:
                    c = got
        return c

    def shrink(self) -> tuple[Candidate, Candidate]:
        r = self.report
        start = Candidate(r["program"], int(r["schedule"].get("first", 0)), r["schedule"]["deviations"])
        c = self._try(start)
        if c is None:
            raise UsageError(
                f"the report's program and schedule do not trip {self.check} when replayed: nothing to shrink"
            )
        self.say(
            f"start: {start.ops} ops, {start.preemptions} preemptions; as run: {c.ops} ops, {c.preemptions} preemptions"
        )
        while self._budget():
            before = (c.ops, c.preemptions, c.program)
            for remove in (
                (self._pass_devs, self._pass_ops) if c.preemptions > c.ops else (self._pass_ops, self._pass_devs)
            ):
                c = remove(c)
            c = self._pass_pairs(c)
            c = self._pass_points(c)
            c = self._pass_args(c)
            self.say(f"pass: {c.ops} ops, {c.preemptions} preemptions ({self.runs} runs)")
            if (c.ops, c.preemptions, c.program) == before:
                break
        return start, c


def shrink(
    report: dict,
    *,
    check: str | None = None,
    max_runs: int = 2000,
    json_path: str | None = None,
    say: Callable[[str], None] | None = None,
    policy_modules=(),
) -> ShrinkResult:
    """Shrink a report's failure; the smallest one is replayed strictly and written to json_path."""
    t0 = time.monotonic()
    s = Shrinker(report, check, max_runs, say, policy_modules)
    before, after = s.shrink()
    final = stop_if_interrupted(
        replay(
            report,
            strict=True,
            program=after.program,
            schedule=after.schedule(),
            json_path=json_path,
            policy_modules=policy_modules,
        )
    )
    s.runs += 1
    if s.check not in final.checks:
        raise UsageError("the shrunk program and schedule did not fail again when replayed strictly")
    res = ShrinkResult(s.check, before, after, s.runs, time.monotonic() - t0, final)
    final.report["shrunk_from"] = {
        "ops": before.ops,
        "preemptions": before.preemptions,
        "runs": s.runs,
        "seed": report.get("seed"),
    }
    if json_path:
        from stress.report import write_json

        write_json(json_path, final.report)
    return res
