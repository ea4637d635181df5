"""Hypothesis strategies for programs and schedules, and a property-test helper.

Every scheduling decision of a run driven from here comes from Hypothesis:
the program is drawn, and the schedule is a drawn list of preemptions (at
CPU c's operation o, point p, switch to CPU t) over the replay strategy's
deterministic default.  A run is a pure function of the drawn data, so a
failure shrinks (fewer operations, fewer and earlier preemptions, smaller
arguments) without FlakyFailure.

    @given(data=st.data())
    def test_refcount(data):
        program = data.draw(programs("refcount", ncpus=2, max_ops=4))
        schedule = data.draw(schedules(program))
        assert not run_program("refcount", "refcount_t", program, schedule).findings
"""

from __future__ import annotations

from bisect import bisect
from itertools import accumulate
from typing import Any

from hypothesis import strategies as st

from policies import get_scenario
from stress.runner import RunResult, run, stop_if_interrupted
from stress.schedulers.state import AT_BOUNDARY

MAX_POINTS = 40
MAX_WINDOWS = 4


def _ops(scenario: str, policy: str | None):
    sc = get_scenario(scenario)
    return sc.operations(sc.policy(policy))


@st.composite
def steps(draw, scenario: str, policy: str | None = None) -> list:
    """One operation with its arguments, as a program step: [name, arg, ...].

    Operations are drawn by weight, as the generator does; shrinking goes to the first."""
    ops = _ops(scenario, policy)
    cum = list(accumulate(op.weight for op in ops))
    op = ops[bisect(cum, draw(st.integers(0, cum[-1] - 1)))]
    return [op.name] + [draw(st.integers(0, a.bound - 1)) for a in op.args]


def programs(
    scenario: str, policy: str | None = None, ncpus: int = 2, min_ops: int = 1, max_ops: int = 6
) -> st.SearchStrategy[list]:
    """Per CPU, a list of operations with arguments (JSON form, as in a report)."""
    one = st.lists(steps(scenario, policy), min_size=min_ops, max_size=max_ops)
    return st.lists(one, min_size=ncpus, max_size=ncpus)


@st.composite
def schedules(
    draw,
    program: list,
    max_preemptions: int = 6,
    max_points: int = MAX_POINTS,
    max_windows: int = MAX_WINDOWS,
    max_access_preemptions: int = 2,
    kthread: bool = True,
) -> dict:
    """Preemptions anchored in the program's operations (CPU c at operation o, point p, switch to t).

    First up to `max_preemptions` at windows and spins (p = -2 - w for the w-th, where a
    preemption matters most) or at an operation's end (-1); then up to
    `max_access_preemptions` just before a shared access (p = a for the a-th, a <= max_points),
    drawn apart so that they shrink away on their own.  The grace-period kthread is CPU n; it is
    a possible target when `kthread`."""
    ncpus = len(program)
    nparts = ncpus + 1
    targets = nparts if kthread else ncpus
    devs: list[list[list[int]]] = [[] for _ in range(nparts)]
    seen = set()

    def preempt(point_strategy) -> None:
        cpu = draw(st.integers(0, ncpus - 1))
        op = draw(st.integers(0, max(0, len(program[cpu]) - 1)))
        point = draw(point_strategy)
        target = (cpu + 1 + draw(st.integers(0, targets - 2))) % targets
        if (cpu, op, point) not in seen:
            seen.add((cpu, op, point))
            devs[cpu].append([op, point, target])

    windows = st.integers(0, max_windows).map(lambda w: AT_BOUNDARY if w == max_windows else AT_BOUNDARY - 1 - w)
    for _ in range(draw(st.integers(0, max_preemptions))):
        preempt(windows)
    for _ in range(draw(st.integers(0, max_access_preemptions if max_points else 0))):
        preempt(st.integers(1, max_points))
    return {"first": draw(st.integers(0, ncpus - 1)), "deviations": devs}


def run_program(
    scenario: str,
    policy: str,
    program: list,
    schedule: dict,
    *,
    seed: int = 0,
    json_path: str | None = None,
    **knobs: Any,
) -> RunResult:
    """One controlled run of (program, schedule), replayed leniently: any schedule fits."""
    knobs.setdefault("progress", "off")
    return stop_if_interrupted(
        run(
            scenario,
            policy,
            cpus=len(program),
            seed=seed,
            program=program,
            schedule=schedule,
            strict=False,
            json_path=json_path,
            **knobs,
        )
    )


__all__ = ["programs", "run_program", "schedules", "steps"]
