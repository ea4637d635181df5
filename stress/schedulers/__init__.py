"""Scheduling strategies behind shm's Scheduler protocol, one file each (like shuttle's scheduler/).

- free: real OS scheduling with seeded random delays at windows;
- random, pct: the controlled scheduler (one CPU at a time, a token in shared
  memory) with a uniform or a PCT choice at each scheduling point;
- replay: the controlled scheduler following a recorded schedule.
"""

from __future__ import annotations

from shm.protocols import Scheduler
from stress.schedulers.controlled import ControlledScheduler, Replay, Strategy
from stress.schedulers.free import FreeScheduler
from stress.schedulers.pct import PctStrategy
from stress.schedulers.rand import RandomStrategy
from stress.schedulers.replay import ReplayStrategy
from stress.schedulers.state import SchedState, describe_point

STRATEGIES: dict[str, type] = {"random": RandomStrategy, "pct": PctStrategy, "replay": ReplayStrategy}
SCHEDULERS = ("free", "random", "pct")


def is_controlled(name: str) -> bool:
    return name in STRATEGIES


def make_strategy(name: str, seed: int, nparts: int, knobs: dict, replay: Replay | None = None) -> Strategy:
    if name not in STRATEGIES:
        raise LookupError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
    if name == "replay":
        return ReplayStrategy(seed, nparts, knobs, replay.first if replay else 0)
    return STRATEGIES[name](seed, nparts, knobs)


def make_scheduler(
    name: str,
    seed: int,
    knobs: dict,
    cpu_seed: int = 0,
    segment: str | None = None,
    nparts: int = 0,
    replay: Replay | None = None,
) -> Scheduler:
    """A scheduler for one CPU process, from the run's knobs.

    `seed` is the run's (a controlled strategy must decide alike in every
    process), `cpu_seed` this CPU's (the free scheduler's delays)."""
    if name == "free":
        return FreeScheduler(
            cpu_seed, knobs.get("window_rate", 0.0), knobs.get("window_delay", 50.0), knobs.get("delay_every", 0)
        )
    if segment is None:
        raise ValueError(f"the {name} scheduler needs its shared segment")
    return ControlledScheduler(make_strategy(name, seed, nparts, knobs, replay), segment, replay)


__all__ = [
    "SCHEDULERS",
    "STRATEGIES",
    "ControlledScheduler",
    "FreeScheduler",
    "Replay",
    "SchedState",
    "Scheduler",
    "describe_point",
    "is_controlled",
    "make_scheduler",
    "make_strategy",
]
