"""bench campaign: what the engine costs a user, and what a second core buys a blind hunt.

- Throughput: the same run commands (every correct policy by the random
  strategy, a few seeds each: short runs, where an engine's cost per run
  shows most) through `xargs -P CORES` and as a campaign on an embedded Ray
  told as many cores (a controlled run keeps one busy), taking turns; runs
  per second end to end, Ray's start and stop included (a user pays them),
  and Ray's start and stop alone.  Nothing is shrunk on either side.
- First signature: `campaign --mutants` (mix) on every scenario for a fixed
  time, on one core and on two (the campaign, Ray and every run confined to
  them by CPU affinity, Ray told as many; no reproducers shrunk, so that
  the cores only hunt): per mutant, the seconds until its first signature by
  the check it names.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import TextIO

from stress.campaign.driver import ray_init, run_campaign
from stress.campaign.plan import build_plan
from stress.campaign.state import Campaign, found_over_time
from stress.report import publish

TARGET_RATIO = 0.9  # campaign runs/s against xargs -P on the same machine


def _throughput_plan(seeds: int):
    return build_plan(strategies=["random"], all_correct=True, seeds=seeds)


def _xargs(plan, cores: int, where: str) -> float:
    """Seconds for `xargs -P cores` to run the plan's commands, one shell line each."""
    os.makedirs(os.path.join(where, "reports"), exist_ok=True)
    lines = [
        shlex.join([sys.executable, "-m", "stress", *s.args(os.path.join(where, "reports", f"{s.id}.json"))])
        for s in plan.specs()
    ]
    t0 = time.monotonic()
    p = subprocess.Popen(
        ["xargs", "-d", "\n", "-P", str(cores), "-I", "{}", "sh", "-c", "{}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its runs are a process group: an interrupt takes them all
    )
    try:
        _, err = p.communicate("\n".join(lines) + "\n")
    except BaseException:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait()
        raise
    seconds = time.monotonic() - t0
    done = len(os.listdir(os.path.join(where, "reports")))
    if p.returncode not in (0, 123) or done != len(lines):  # 123: a run exited 1 (a finding)
        raise RuntimeError(f"xargs ran {done} of {len(lines)} runs (exit {p.returncode}): {err.strip()[-300:]}")
    return seconds


def _ray(plan, where: str, cores: int) -> tuple[float, dict]:
    t0 = time.monotonic()
    doc = run_campaign(Campaign.create(where, plan), local_cpus=cores, shrink=False)
    seconds = time.monotonic() - t0
    bad = {k: v for k, v in doc["exits"].items() if k not in ("0", "1")}
    if doc["runs"] != sum(1 for _ in plan.specs()) or bad:
        raise RuntimeError(f"the campaign ran {doc['runs']} runs, exits {doc['exits']}")
    return seconds, doc


def _ray_start_stop(cores: int) -> float:
    t0 = time.monotonic()
    ray = ray_init(None, cores)
    ray.shutdown()
    return time.monotonic() - t0


def throughput(seeds: int, repeats: int, out: TextIO) -> dict:
    cores = len(os.sched_getaffinity(0))
    plan = _throughput_plan(seeds)
    n = sum(1 for _ in plan.specs())
    xs, rs, runs = [], [], []
    with tempfile.TemporaryDirectory(prefix="mmtorture-bench-campaign-") as tmp:
        for rep in range(repeats):  # taking turns: each sees the machine's slow and fast minutes
            xs.append(_xargs(plan, cores, os.path.join(tmp, f"xargs{rep}")))
            seconds, doc = _ray(plan, os.path.join(tmp, f"ray{rep}"), cores)
            rs.append(seconds)
            runs.append(doc["runs"])
            print(f"  throughput {rep + 1}/{repeats}: xargs {n / xs[-1]:.2f} runs/s, ray {n / rs[-1]:.2f}", file=out)
        start_stop = min(_ray_start_stop(cores) for _ in range(repeats))
    xargs_rate, ray_rate = n / min(xs), n / min(rs)
    return {
        "runs": n,
        "cores": cores,
        "commands": f"every correct policy by the random strategy, seeds 0..{seeds - 1}",
        "xargs_seconds": [round(x, 3) for x in xs],
        "ray_seconds": [round(r, 3) for r in rs],
        "ray_runs_done": runs,
        "xargs_runs_per_s": round(xargs_rate, 3),
        "ray_runs_per_s": round(ray_rate, 3),
        "ratio": round(ray_rate / xargs_rate, 3),
        "ray_start_stop_s": round(start_stop, 3),
        "ray_runs_per_s_without_start_stop": round(n / max(min(rs) - start_stop, 1e-9), 3),
    }


def first_signatures(duration: float, cores: int, out: TextIO) -> dict:
    """A blind campaign of every mutant on `cores` cores: when each mutant's check was first seen."""
    plan = build_plan(strategies=["mix"], mutants=True, duration=duration)
    mutants = [f"{sc}/{pol}" for sc, pol, _ in plan.cells]
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:cores])  # Ray and every run inherit it
    try:
        with tempfile.TemporaryDirectory(prefix="mmtorture-bench-campaign-") as tmp:
            doc = run_campaign(Campaign.create(os.path.join(tmp, "c"), plan), local_cpus=cores, shrink=False)
    finally:
        os.sched_setaffinity(0, before)
    first: dict[str, float | None] = dict.fromkeys(mutants)
    for s in doc["signatures"]:
        key = f"{s['scenario']}/{s['policy']}"
        if s["mutant"] and s["expected"] and key in first:
            seen = first[key]
            first[key] = s["first_seen_s"] if seen is None else min(seen, s["first_seen_s"])
    times = sorted(t for t in first.values() if t is not None)
    budget = sorted(duration if t is None else t for t in first.values())  # a mutant missed counts whole
    print(f"  {cores} core(s): {len(times)}/{len(mutants)} mutants in {doc['runs']} runs", file=out)
    return {
        "cores": cores,
        "seconds": doc["seconds"],
        "runs": doc["runs"],
        "runs_per_s": doc["runs_per_s"],
        "mutants": len(mutants),
        "caught": len(times),
        "median_s": round(budget[len(budget) // 2], 3),
        "first_seen_s": first,
        "other_signatures": sum(not (s["mutant"] and s["expected"]) for s in doc["signatures"]),
    }


def bench_campaign(
    json_path: str | None = None, quick: bool = False, out: TextIO | None = None, plot: str | None = None
) -> dict:
    out = out or sys.stdout
    os.environ.pop("RAY_ADDRESS", None)  # this machine's engine against this machine's xargs, never a cluster
    seeds, repeats, duration = (2, 1, 40.0) if quick else (12, 2, 300.0)
    tp = throughput(seeds, repeats, out)
    configs = [c for c in (1, 2) if c <= len(os.sched_getaffinity(0))]
    hunts = {str(c): first_signatures(duration, c, out) for c in configs}
    doc = {
        "schema": "mmtorture-bench/1",
        "bench": "campaign",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus_online": os.cpu_count(),
        "throughput": tp,
        "first_signature": {"duration_s": duration, "strategy": "mix", "by_cores": hunts},
        "targets": {"ratio": TARGET_RATIO},
        "met": {"ratio": tp["ratio"] >= TARGET_RATIO},
    }
    return publish(doc, campaign_table(doc), json_path, out, plot, campaign_plot)


def campaign_table(doc: dict) -> str:
    """The README's figures of `bench campaign`."""
    tp, fs = doc["throughput"], doc["first_signature"]
    met = "met" if doc["met"]["ratio"] else "MISSED"
    rows = [
        "| | runs per second |",
        "|---|---:|",
        f"| the same {tp['runs']} commands through `xargs -P {tp['cores']}` | {tp['xargs_runs_per_s']:.2f} |",
        f"| `mmtorture campaign` on an embedded Ray, its start and stop included | {tp['ray_runs_per_s']:.2f} |",
        f"| the same without Ray's start and stop ({tp['ray_start_stop_s']:.1f} s) "
        f"| {tp['ray_runs_per_s_without_start_stop']:.2f} |",
        "",
        f"Campaign against xargs: {tp['ratio']:.2f}x (target >= {doc['targets']['ratio']}x: {met}); "
        f"{tp['commands']}, best of {len(tp['ray_seconds'])} turns each.",
        "",
        "| blind hunt of every mutant (mix) | runs | runs per second | mutants caught by their check "
        "| median seconds to the first (a miss counts whole) |",
        "|---|---:|---:|---:|---:|",
    ]
    for cores, h in fs["by_cores"].items():
        median = f"{h['median_s']:.1f}"
        rows.append(
            f"| {cores} core{'s' if cores != '1' else ''}, {fs['duration_s']:.0f} s | {h['runs']} "
            f"| {h['runs_per_s']:.2f} | {h['caught']} / {h['mutants']} | {median} |"
        )
    return "\n".join(rows)


def campaign_plot(doc: dict, path: str) -> bool:
    """Mutants caught by their check against seconds, one line per core count."""
    fs = doc["first_signature"]
    series = [
        (
            f"{cores} core{'s' if cores != '1' else ''}: {h['runs']} runs",
            [t for t in h["first_seen_s"].values() if t is not None],
        )
        for cores, h in fs["by_cores"].items()
    ]
    mutants = next(iter(fs["by_cores"].values()))["mutants"]
    title = f"campaign --mutants, every scenario ({mutants} mutants)"
    return found_over_time(path, series, fs["duration_s"], "mutants caught", title)
