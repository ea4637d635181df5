"""Scheduling strategies behind shm's Scheduler protocol, one file each."""

from __future__ import annotations

from shm.sched import Scheduler
from stress.schedulers.free import FreeScheduler

SCHEDULERS = {"free": FreeScheduler}


def make_scheduler(name: str, seed: int, knobs: dict) -> Scheduler:
    """A scheduler for one CPU process, from the run's knobs."""
    if name == "free":
        return FreeScheduler(seed, knobs.get("window_rate", 0.0), knobs.get("window_delay", 50.0))
    raise LookupError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")


__all__ = ["SCHEDULERS", "FreeScheduler", "Scheduler", "make_scheduler"]
