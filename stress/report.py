"""What a run tells: findings with their checks and traces, stat lines, the JSON report, a summary.

Stat lines follow rcutorture: short fixed keys, `!!!` when an error counter
is non-zero, and a last line `End of test: SUCCESS` or `FAILURE` that a
script can grep (for a mutant it also says whether the expected check
caught it).  A finding names the check that fired (`mmtorture list
--checks`), its kind, who found it, the objects involved and the trace.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from shm import KINDS, Machine
from shm.events import EVENTS, decode, ordered
from shm.rcu import callback_name
from stress.schedulers.state import split_switch

SCHEMA = "mmtorture-report/2"
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
    "hang": "hang",
}
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_HARNESS = 0, 1, 2, 3
EXIT_SIGNAL = {2: 130, 15: 143}
SHOWN_FINDINGS = 5


@dataclass
class Finding:
    check: str
    kind: str
    message: str
    cpu: int
    where: str
    op: str | None
    seed: int
    step: int
    objects: dict = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    site: list[str] = field(default_factory=list)  # the reporting functions, innermost first (shm.cpu.finding_site)

    def to_json(self) -> dict:
        return asdict(self)

    def headline(self) -> str:
        return f"[{self.check}] {self.where}" + (f" in {self.op}" if self.op else "") + f": {self.message}"

    def format(self, tail: int = 12) -> str:
        lines = [self.headline()]
        lines.append(
            f"    {self.kind}, seed {self.seed}" + (f", operation #{self.step} of {self.where}" if self.op else "")
        )
        for k, v in self.objects.items():
            if k != "traceback":
                lines.append(f"    {k}: {_show(v)}")
        if "traceback" in self.objects:
            lines += ["    " + s for s in str(self.objects["traceback"]).rstrip().splitlines()[-6:]]
        if self.trace:
            lines.append(f"    last events of {self.where}:")
            lines += [f"      {e}" for e in self.trace[-tail:]]
        return "\n".join(lines)


def _show(v: Any) -> str:
    """An object of a finding as a person reads it: no Python reprs."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_show(x)}" for k, x in v.items()) or "none"
    if isinstance(v, list | tuple):
        return (
            "; ".join(_show(x) for x in v)
            if any(isinstance(x, dict | list) for x in v)
            else ", ".join(str(x) for x in v) or "none"
        )
    return str(v)


def decode_event(machine: Machine, word: int, op_names: list[str]) -> tuple[int, str, str]:
    """One trace word as (sequence number, event, what it names) a person reads."""
    seq, ev, arg = decode(word)
    name = EVENTS[ev] if ev < len(EVENTS) else f"ev{ev}"
    if name in ("op-begin", "op-end"):
        what = op_names[arg] if arg < len(op_names) else str(arg)
    elif name in ("lock", "unlock", "read-lock", "read-unlock", "block", "wake"):
        what = machine.describe(arg)
    elif name in ("alloc", "free"):
        what = f"object {arg & 0xFFFF} of a slab cache" if arg >> 30 else f"pfn {arg}"
    elif name in ("call-rcu", "rcu-callback"):
        what = callback_name(arg)
    elif name == "finding":
        what = KINDS[arg] if arg < len(KINDS) else str(arg)
    elif name in ("gp-begin", "gp-end"):
        what = f"gp {arg}"
    elif name == "switch":
        what = f"-> cpu {split_switch(arg)[1]}"
    elif name == "window":
        what = machine.window_name(arg)
    else:
        what = str(arg) if arg else ""
    return seq, name, what


def decode_trace(machine: Machine, words, op_names: list[str]) -> list[str]:
    return [
        f"#{seq} {name} {what}".rstrip()
        for seq, name, what in (decode_event(machine, w, op_names) for w in ordered(words))
    ]


def who(machine: Machine, cpu: int) -> str:
    if cpu == machine.gp_cpu:
        return "the grace-period kthread"
    if cpu == machine.boot_cpu:
        return "the quiescent checks"
    return f"cpu {cpu}"


def collect_findings(machine: Machine, op_names: list[str], seed: int) -> list[Finding]:
    out = []
    for f in machine.findings():
        op = op_names[f["op"]] if 0 <= f["op"] < len(op_names) else None
        out.append(
            Finding(
                check=f["check"],
                kind=f["kind"],
                message=f["message"],
                cpu=f["cpu"],
                where=who(machine, f["cpu"]),
                op=op,
                seed=seed,
                step=f["step"],
                objects=f["objects"],
                trace=decode_trace(machine, f["trace"], op_names),
                site=f["site"],
            )
        )
    return out


def evidence(report: dict) -> dict[str, int]:
    """What a run shows it went through: its counters, `op:NAME` operations run, `window:NAME`
    windows where a preemption or delay landed, the machine's lock and IPI waits, and its lock races (a
    lock word seen free and lost to another CPU's cmpxchg)."""
    out = dict(report.get("counters", {}))
    out.update({f"op:{k}": v for k, v in report.get("op_counts", {}).items()})
    out.update({f"window:{k}": v["preempted"] for k, v in report.get("windows", {}).items()})
    out["lock_waits"] = sum(report.get("lock_waits", []))
    out["lock_races"] = sum(report.get("lock_races", []))
    out["ipi_waits"] = sum(report.get("ipi_waits", []))
    return out


def report_head(r) -> dict[str, Any]:
    """What a report says of a Runner `r` whatever happened to the run."""
    k, pol = r.knobs, r.policy
    return {
        "schema": SCHEMA,
        "scenario": r.scenario.name,
        "policy": pol.name,
        "mutant": pol.mutant,
        "expect": list(pol.expect),
        "witness": pol.witness or None,
        "source": pol.source,
        "seed": r.seed,
        "cpus": k["cpus"],
        "scheduler": r.sched_name,
        "knobs": dict(k),
        "ops": 0,
        "findings": [],
        "python": platform.python_version(),
        "started_by": os.getpid(),
    }


def build_report(r, report: dict[str, Any]) -> tuple[list[Finding], dict]:
    """The rest of the JSON report of a Runner `r` after its run: what its machine counted."""
    from stress.program import to_json
    from stress.worker import STAT_OPS

    k, pol, m = r.knobs, r.policy, r.machine
    if m is None:
        return [], report
    ops, per_cpu = r._ops_done()
    if k.get("programs") == "swarm":
        from stress.program import mixes

        report["mix"] = [mx.describe(r.ops) for mx in mixes(r.ops, r.seed, k["cpus"], "swarm")]
    stats = m.cpus["stats"][: k["cpus"]]
    op_counts = stats[:, STAT_OPS : STAT_OPS + len(r.op_names)].sum(axis=0)
    findings = collect_findings(m, r.op_names, r.seed)
    cpus = m.cpus[: k["cpus"]]
    report.update(
        ops=ops,
        ops_per_cpu=per_cpu,
        op_counts={n: int(c) for n, c in zip(r.op_names, op_counts)},
        counters=r._counters(),
        kinds={kk: v for kk, v in m.kind_counts().items() if v},
        checks=m.check_counts(),
        findings_after_first=m.findings_after_first(),
        findings=[f.to_json() for f in findings],
        grace_periods={"rcu": m.rcu.gp_seq(), **{s.name: s.gp_seq() for s in m.srcu}},
        callbacks=int(m.mem.load64(m.rcu.cbs_run_off)),
        lock_wait_ms=[round(int(w) / 1e6, 3) for w in cpus["wait_ns"]],
        lock_waits=[int(w) for w in cpus["lock_waits"]],
        lock_races=[int(w) for w in cpus["lock_races"]],
        ipi_waits=[int(w) for w in cpus["ipi_waits"]],
        run_ms=[round(int(t) / 1e6, 3) for t in cpus["run_ns"]],
        windows=m.windows(),
        traces={who(m, i): decode_trace(m, m.traces[i], r.op_names)[-16:] for i in range(m.nslots)},
    )
    report["gauges"] = {
        "samples": [{"t_s": t, **g} for t, g in r.gauge_samples],
        "quiescent": r.gauges_quiescent,
    }
    report["evidence"] = evidence(report)
    if pol.mutant:
        first = findings[0].check if findings else None
        report["caught"] = first in pol.expect
        report["caught_by"] = first
    if r.program is not None:
        status = m.cpus["op"][: k["cpus"]]
        report["program"] = to_json(
            [p[: n + (int(status[i]) >= 0)] for i, (p, n) in enumerate(zip(r.program, per_cpu))], r.ops
        )
    if r.sched is not None:
        report["schedule"] = r._schedule()
        if r.divergence:
            report["diverged"] = r.divergence
        report["interleaving"] = _interleaving(r, findings, per_cpu, report["schedule"])
    return findings, report


def _interleaving(r, findings: list[Finding], per_cpu: list[int], schedule: dict) -> dict:
    """A controlled run's time line, for its race diagram (stress.race)."""
    from stress.program import call_text
    from stress.race import interleaving

    m = r.machine
    status = m.cpus["op"][: len(per_cpu)]
    started = [n + int(int(s) >= 0) for n, s in zip(per_cpu, status)]
    calls = [[call_text(r.ops[k], args) for k, args in p] for p in (r.program or [])]
    first = None
    if findings:
        words = ordered(m.findings()[0]["trace"])
        first = (findings[0].cpu, decode(words[-1])[0] if words else -1, findings[0].headline())
    traces = [
        [(*decode_event(m, w, r.op_names), decode(w)[2]) for w in ordered(m.traces[slot])]
        for slot in [*range(len(per_cpu)), m.gp_cpu]
    ]
    free_at = r.sched.free_at()
    return interleaving(traces, calls, started, schedule["deviations"], first, schedule["decisions"], free_at)


def stat_line(
    label: str, elapsed: float, cpus: int, ops: int, kinds: dict[str, int], extra: dict[str, Any], tail: str = ""
) -> str:
    """rcutorture's stat line: what a person scans (the rest is in the JSON report)."""
    errors = sum(kinds.values())
    parts = [f"{label} t={elapsed:.0f}s cpus: {cpus} ops: {ops}"]
    if errors:
        parts += [f"{SHORT[k]}: {n}" for k, n in kinds.items() if n]
    else:
        parts.append("errors: 0")
    parts += [f"{k}: {v}" for k, v in extra.items()]
    line = " ".join(parts) + (f" {tail}" if tail else "")
    return ("!!! " if errors else "") + line


def publish(doc: dict, table: str, json_path: str | None, out: TextIO, plot: str | None = None, draw=None) -> dict:
    """A benchmark's end: its table on `out`, its JSON at `json_path`, its chart at `plot` (drawn
    by `draw(doc, plot)`, which may return False when it could not draw)."""
    print(table, file=out)
    if json_path:
        write_json(json_path, doc)
    if plot and draw is not None and draw(doc, plot) is not False:
        print(f"plot: {plot}", file=out)
    return doc


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


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def summary(report: dict, saved_to: str | None = None) -> str:
    """The human summary: the verdict, the first findings, what was counted, how to reproduce."""
    label = f"{report.get('scenario')}/{report.get('policy')}"
    lines = []
    kept = report.get("findings", [])
    counts = report.get("checks", {})
    total = sum(counts.values()) or len(kept)
    lines.append(
        f"{label}: {report.get('ops', 0)} ops on {report.get('cpus')} CPUs in "
        f"{duration_text(report.get('duration_s', 0.0))}, seed {report.get('seed')}, "
        f"scheduler {report.get('scheduler')}: "
        + ("no finding" if total == 0 else f"{total} finding{'s' if total != 1 else ''}")
        + (" (interrupted)" if report.get("interrupted") else "")
    )
    if report.get("mutant"):
        lines.append(f"  mutant, expected {' or '.join(report['expect'])}: " + mutant_verdict(report))
    sched = report.get("schedule")
    if sched:
        lines.append(
            f"  schedule: {sched['strategy']}, {sched['steps']} decisions, {sched['switches']} switches, "
            f"{sched['preemptions']} preemption(s) recorded"
            + ("" if sched.get("complete", True) else " (TRUNCATED: not replayable)")
        )
    if report.get("diverged"):
        lines.append(f"  replay diverged: {report['diverged']['message']}")
    for f in kept[:SHOWN_FINDINGS]:
        lines.append("  " + Finding(**f).format().replace("\n", "\n  "))
    if total > min(len(kept), SHOWN_FINDINGS):
        lines.append(
            f"  findings by check (every one counted; {len(kept)} kept in the JSON report, at most "
            "4 of each check): " + ", ".join(f"{c} {n}" for c, n in counts.items())
        )
    if report.get("findings_after_first"):
        lines.append(
            f"  {report['findings_after_first']} more finding(s) while the CPUs stopped, after the first: "
            "its consequences, not kept (--keep-going keeps counting)"
        )
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    for err in report.get("harness_errors", []):
        lines.append(f"  HARNESS ERROR: {err}")
    lines += reproduce_lines(report, saved_to)
    return "\n".join(lines)


def reproduce_lines(report: dict, saved_to: str | None) -> list[str]:
    """The commands that reproduce a failing run, as printed (each one works as printed)."""
    path = report.get("report_path")
    if not report.get("findings") or not path:
        return []
    out = [f"  report written to {path}" if saved_to else f"  report: {path}"]
    if report.get("schedule") and report["schedule"].get("complete", True):
        out.append(f"  replay: mmtorture replay {path}")
        out.append(f"  shrink: mmtorture shrink {path}")
    else:
        out.append(
            f"  free-running: make it replayable (a controlled search of the last operations of every "
            f"CPU, shrunk) with: mmtorture reproduce {path}"
        )
    return out


def mutant_verdict(report: dict) -> str:
    by = report.get("caught_by")
    if by is None:
        return "MUTANT NOT CAUGHT"
    if by in report.get("expect", []):
        return f"caught by {by}"
    return f"caught by {by}, NOT THE EXPECTED CHECK"


def end_line(code: int, report: dict | None = None) -> str:
    """rcutorture's last line; a mutant's says whether its check caught it."""
    line = "End of test: " + ("SUCCESS" if code == EXIT_OK else "FAILURE")
    if report and report.get("mutant") and code in (EXIT_OK, EXIT_FINDINGS):
        line += f" ({mutant_verdict(report)})"
    return line
