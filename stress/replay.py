"""Replaying a report: the same scenario, policy, seed, program and schedule, the same findings.

A report of a controlled run carries its program and its schedule, and the
policy modules it ran with; replaying it loads them and runs the program
and schedule again under the replay strategy.  A finding is the same when
its check, CPU, operation and message are; a schedule that no longer fits the
code (a preemption at a point the run does not reach, a CPU that cannot run
where the schedule says) is a divergence, and so is a replay that finds
something else.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from stress.report import SCHEMA, Finding
from stress.runner import RunResult, UsageError, run

REPLAYED_KNOBS = (
    "cpus",
    "seed",
    "keep_going",
    "nowait_fail_rate",
    "start_method",
    "stall_timeout",
    "pct_depth",
    "pct_steps",
)


def load_report(path: str) -> dict:
    """A report that can be replayed, or a UsageError saying in one line why not."""
    report = read_report(path)
    if not isinstance(report.get("schedule"), dict) or not isinstance(report.get("program"), list):
        raise UsageError(
            f"{path} has no program and schedule: only controlled runs "
            f"(--scheduler random or pct) can be replayed; `mmtorture reproduce {path}` "
            f"searches one for a free-running finding"
        )
    if not report["schedule"].get("complete", True):
        raise UsageError(f"{path}: the schedule was truncated when it was recorded; it cannot be replayed")
    return report


def read_report(path: str) -> dict:
    """A report of this version, or a UsageError saying in one line why not."""
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"no such report: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not a JSON report: {e.msg} at line {e.lineno}") from None
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("mmtorture-report/"):
        raise UsageError(f"{path} is not an mmtorture report (schema {SCHEMA})")
    if report["schema"] != SCHEMA:
        raise UsageError(
            f"{path} is a report of another version ({report['schema']}; this mmtorture reads "
            f"{SCHEMA}): run it again to replay it"
        )
    for key in ("scenario", "policy", "knobs", "findings"):
        if key not in report:
            raise UsageError(f"{path} is a corrupt report: no {key!r}")
    return report


def signature(findings: Iterable[Finding | dict]) -> list[tuple]:
    """What must be equal for a finding to be reproduced: check, CPU, operation, message."""
    out = []
    for f in findings:
        d = f.to_json() if isinstance(f, Finding) else f
        out.append((d["check"], d["cpu"], d["op"], d["message"]))
    return sorted(out)


def replay_knobs(report: dict, **overrides: Any) -> dict:
    knobs = {k: report["knobs"][k] for k in REPLAYED_KNOBS if report["knobs"].get(k) is not None}
    knobs.update(progress="off")
    knobs.update(overrides)
    return knobs


def replay(
    report: dict,
    *,
    strict: bool = True,
    json_path: str | None = None,
    quiet: bool = True,
    policy_modules=(),
    program: list | None = None,
    schedule: dict | None = None,
    **overrides: Any,
) -> RunResult:
    """Run a report's (program, schedule) again; program/schedule may be replaced (shrinking)."""
    modules = [*report.get("policy_modules", []), *policy_modules]
    try:
        return run(
            report["scenario"],
            report["policy"],
            json_path=json_path,
            quiet=quiet,
            policy_modules=modules,
            program=report["program"] if program is None else program,
            schedule=report["schedule"] if schedule is None else schedule,
            strict=strict,
            **replay_knobs(report, **overrides),
        )
    except TypeError as e:
        raise UsageError(f"corrupt report: {e}") from None


def mismatch(report: dict, result: RunResult) -> str | None:
    """Why a replay did not reproduce the report, or None."""
    want, got = signature(report["findings"]), signature(result.findings)
    if want == got:
        return None

    def show(sig: list[tuple]) -> str:
        return "; ".join(f"[{k}] cpu {c} in {op}: {msg}" for k, c, op, msg in sig[:3]) or "no finding"

    return f"the replay found {show(got)}, the report says {show(want)}"
