"""Every run knob, declared once: name, type, default, unit, help, environment variable.

The CLI options, the start-of-run echo and the JSON report's "knobs" are
generated from this table (loom's builder names an env var for every
setting; rcutorture echoes its module parameters at start).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class KnobError(ValueError):
    """A knob given a value it cannot take."""


def _int(s: Any) -> int:
    try:
        return int(str(s), 0) if isinstance(s, str) else int(s)
    except (TypeError, ValueError):
        raise KnobError(f"must be an integer, not {s!r}") from None


def _int_from(lo: int, what: str) -> Callable[[Any], int]:
    def parse(s: Any) -> int:
        v = _int(s)
        if v < lo:
            raise KnobError(f"must be a {what} integer, not {s!r}")
        return v

    return parse


_positive_int = _int_from(1, "positive")
_nonneg_int = _int_from(0, "non-negative")


def _nonneg_float(s: Any) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        raise KnobError(f"must be a number, not {s!r}") from None
    if not v >= 0 or v == float("inf"):
        raise KnobError(f"must be a finite non-negative number, not {s!r}")
    return v


def _positive_float(s: Any) -> float:
    v = _nonneg_float(s)
    if v == 0:
        raise KnobError(f"must be greater than zero, not {s!r}")
    return v


def _rate(s: Any) -> float:
    v = _nonneg_float(s)
    if v > 1:
        raise KnobError(f"must be a rate between 0 and 1, not {s!r}")
    return v


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(s: Any) -> str:
        if s not in choices:
            raise KnobError(f"must be one of {', '.join(choices)}, not {s!r}")
        return s

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def _default_cpus() -> int:
    return max(2, min(os.cpu_count() or 2, 8))


@dataclass(frozen=True)
class Knob:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    unit: str = ""
    flag: bool = False
    metavar: str = ""
    env: str = field(default="")
    default_text: str = ""  # how --help shows a default that is decided later

    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        d = self.default() if callable(self.default) else self.default
        return f"{d}{' ' + self.unit if self.unit else ''}"

    @property
    def env_var(self) -> str:
        return self.env or "MMTORTURE_" + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def resolve(self, given: Any = None) -> Any:
        """The given value, else the environment's, else the default; parsed."""
        if given is not None:
            return self.parse(given) if not self.flag else bool(given)
        env = os.environ.get(self.env_var)
        if env is not None and env != "":
            if self.flag:
                return env.lower() in ("1", "true", "yes", "on")
            try:
                return self.parse(env)
            except KnobError as e:
                raise KnobError(f"{self.env_var} {e}") from None
        d = self.default() if callable(self.default) else self.default
        return d


KNOBS: tuple[Knob, ...] = (
    Knob(
        "cpus",
        _positive_int,
        _default_cpus,
        "worker CPU processes",
        metavar="N",
        default_text="the machine's cores, 2 to 8",
    ),
    Knob(
        "duration",
        _positive_float,
        None,
        "wall-clock limit of a run",
        unit="s",
        metavar="S",
        default_text="10 s, or none when --ops is given",
    ),
    Knob(
        "ops",
        _nonneg_int,
        0,
        "operations per CPU, 0 for no limit",
        metavar="N",
        default_text="no limit free-running, 2000 under --scheduler random or pct",
    ),
    Knob("seed", _int, None, "seed of every CPU's generator", metavar="N", default_text="from the clock"),
    Knob("keep_going", bool, False, "count findings instead of stopping at the first", flag=True),
    Knob(
        "scheduler",
        _choice("free", "random", "pct"),
        "free",
        "free (OS scheduling), or controlled: random or pct",
        metavar="NAME",
    ),
    Knob(
        "programs",
        _choice("uniform", "swarm"),
        "uniform",
        "how programs are generated: uniform (the scenario's weights), or swarm (per seed a subset of "
        "operations with random weights, arguments focused where CPUs meet)",
        metavar="GEN",
    ),
    Knob("pct_depth", _positive_int, 3, "pct: bug depth d (d-1 priority change points)", metavar="D"),
    Knob(
        "pct_steps",
        _nonneg_int,
        0,
        "pct: shared accesses k the change points are drawn from, 0 to estimate",
        metavar="K",
    ),
    Knob(
        "preempt_every",
        _nonneg_int,
        0,
        "random: mean shared accesses between preemptions, 0 to draw per seed",
        metavar="N",
    ),
    Knob("window_rate", _rate, 0.05, "chance of a delay at each preemption window", metavar="P"),
    Knob(
        "delay_every",
        _nonneg_int,
        500,
        "free: mean shared accesses between injected delays (KCSAN-style), 0 for none",
        metavar="N",
    ),
    Knob("window_delay", _nonneg_float, 50.0, "longest injected delay at a window", unit="us", metavar="US"),
    Knob("stat_interval", _positive_float, 5.0, "seconds between stat lines", unit="s", metavar="S"),
    Knob(
        "gauge_interval",
        _nonneg_float,
        0.0,
        "seconds between samples of the scenario's gauges (page-table bytes...); 0: only at the quiescent point",
        unit="s",
        metavar="S",
    ),
    Knob("stall_timeout", _positive_float, 10.0, "a CPU without progress this long is stuck", unit="s", metavar="S"),
    Knob(
        "nowait_fail_rate",
        _rate,
        None,
        "chance that a GFP_NOWAIT allocation fails",
        metavar="P",
        default_text="the scenario's, 0 for most",
    ),
    Knob("start_method", _choice("fork", "spawn", "forkserver"), "fork", "how CPU processes are started", metavar="M"),
    Knob("progress", _choice("auto", "on", "off"), "auto", "progress bar on stderr", metavar="WHEN"),
)
KNOB = {k.name: k for k in KNOBS}


def resolve_all(given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(KNOB))
    if unknown:
        raise KnobError(f"unknown knob(s) {', '.join(unknown)} (known: {', '.join(KNOB)})")
    out = {}
    for k in KNOBS:
        try:
            out[k.name] = k.resolve(given.get(k.name))
        except KnobError as e:
            raise KnobError(f"{k.option} {e}") from None
    return out


def echo(values: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{round(v, 3):g}" if isinstance(v, float) else "none" if v is None else str(v)

    return " ".join(
        f"{k.name}={show(values[k.name])}{k.unit if values[k.name] is not None else ''}"
        for k in KNOBS
        if k.name in values
    )
