"""What a run tells: findings with their traces, stat lines, the JSON report, a summary.

Stat lines follow rcutorture: short fixed keys, `!!!` when an error counter
is non-zero, and a last line `End of test: SUCCESS` or `FAILURE` that a
script can grep.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from shm import KINDS, Machine
from shm.events import EVENTS, decode, ordered
from shm.rcu import callback_name

SCHEMA = "mmtorture-report/1"
SUITE_SCHEMA = "mmtorture-suite/1"
SHORT = {
    "use-after-free": "uaf",
    "double-free": "dfree",
    "leak": "leak",
    "refcount": "ref",
    "invariant": "inv",
    "stale-tlb": "stale",
    "invalid-context": "ctx",
    "lock-misuse": "lock",
    "deadlock": "dead",
    "cpu-crash": "crash",
}
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_HARNESS = 0, 1, 2, 3
EXIT_SIGNAL = {2: 130, 15: 143}


@dataclass
class Finding:
    kind: str
    message: str
    cpu: int
    op: str | None
    seed: int
    step: int
    objects: dict = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def headline(self) -> str:
        where = f"cpu {self.cpu}" + (f" in {self.op}" if self.op else "")
        return f"[{self.kind}] {where}: {self.message}"

    def format(self, tail: int = 12) -> str:
        lines = [self.headline(), f"    seed {self.seed}, operation #{self.step} of that CPU"]
        for k, v in self.objects.items():
            if k != "traceback":
                lines.append(f"    {k}: {v}")
        if "traceback" in self.objects:
            lines += ["    " + s for s in str(self.objects["traceback"]).rstrip().splitlines()[-6:]]
        if self.trace:
            lines.append(f"    last events of cpu {self.cpu}:")
            lines += [f"      {e}" for e in self.trace[-tail:]]
        return "\n".join(lines)


def decode_trace(machine: Machine, words, op_names: list[str]) -> list[str]:
    out = []
    for w in ordered(words):
        seq, ev, arg = decode(w)
        name = EVENTS[ev] if ev < len(EVENTS) else f"ev{ev}"
        if name in ("op-begin", "op-end"):
            what = op_names[arg] if arg < len(op_names) else str(arg)
        elif name in ("lock", "unlock", "read-lock", "read-unlock", "block", "wake"):
            what = machine.describe(arg)
        elif name in ("alloc", "free"):
            what = f"pfn {arg}"
        elif name in ("call-rcu", "rcu-callback"):
            what = callback_name(arg)
        elif name == "finding":
            what = KINDS[arg] if arg < len(KINDS) else str(arg)
        elif name in ("gp-begin", "gp-end"):
            what = f"gp {arg}"
        elif name == "switch":
            what = f"-> cpu {arg}"
        else:
            what = str(arg) if arg else ""
        out.append(f"#{seq} {name} {what}".rstrip())
    return out


def collect_findings(machine: Machine, op_names: list[str], seed: int) -> list[Finding]:
    out = []
    for f in machine.findings():
        op = op_names[f["op"]] if 0 <= f["op"] < len(op_names) else None
        out.append(
            Finding(
                kind=f["kind"],
                message=f["message"],
                cpu=f["cpu"],
                op=op,
                seed=seed,
                step=f["step"],
                objects=f["objects"],
                trace=decode_trace(machine, f["trace"], op_names),
            )
        )
    return out


def stat_line(label: str, elapsed: float, cpus: int, ops: int, kinds: dict[str, int],
              extra: dict[str, Any], tail: str = "") -> str:
    errors = sum(kinds.values())
    parts = [f"{label} t={elapsed:.0f}s cpus: {cpus} ops: {ops}"]
    parts += [f"{SHORT[k]}: {kinds.get(k, 0)}" for k in KINDS]
    parts += [f"{k}: {v}" for k, v in extra.items()]
    line = " ".join(parts) + (f" {tail}" if tail else "")
    return ("!!! " if errors else "") + line


def write_json(path: str, data: dict) -> None:
    """Write atomically: a reader never sees half a report."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".mmtorture-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def summary(report: dict) -> str:
    label = f"{report['scenario']}/{report['policy']}"
    lines = []
    n = len(report["findings"])
    lines.append(
        f"{label}: {report['ops']} ops on {report['cpus']} CPUs in {report['duration_s']:.1f}s, "
        f"seed {report['seed']}, scheduler {report['scheduler']}: "
        + ("no finding" if n == 0 else f"{n} finding{'s' if n != 1 else ''}")
        + (" (interrupted)" if report.get("interrupted") else "")
    )
    if report.get("mutant"):
        caught = report.get("caught")
        lines.append(f"  mutant, expected {' or '.join(report['expect'])}: "
                     + ("caught" if caught else "NOT caught"))
    sched = report.get("schedule")
    if sched:
        lines.append(f"  schedule: {sched['strategy']}, {sched['steps']} decisions, {sched['switches']} switches, "
                     f"{sched['preemptions']} preemption(s) recorded"
                     + ("" if sched.get("complete", True) else " (TRUNCATED: not replayable)"))
    if report.get("diverged"):
        lines.append(f"  replay diverged: {report['diverged']['message']}")
    for f in report["findings"][:5]:
        lines.append("  " + Finding(**f).format().replace("\n", "\n  "))
    if n > 5:
        lines.append(f"  ... {n - 5} more in the JSON report")
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    if report.get("error"):
        lines.append(f"  harness error: {report['error']}")
    return "\n".join(lines)


def end_line(failed: bool) -> str:
    return "End of test: " + ("FAILURE" if failed else "SUCCESS")
