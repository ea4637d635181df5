"""`mmtorture bench detection`: how fast a blind hunt finds each mutant, per strategy.

Every mutant of every scenario is hunted blind (no litmus program), on 2
CPUs, by each strategy, from several first seeds far apart; a hunt ends at
the first run whose first finding is a check the mutant names, or at its
budget (seeds or seconds).  Per mutant and strategy: caught by how many of
the hunts, and the median seeds and seconds to the first catch (a hunt that
missed counts as its whole budget, so a median is never better than the
truth).  The best strategy of a mutant is the one with the lowest median
time.  This is how the project measures itself: a mechanism is judged by
what a blind hunt finds, not by what its own litmus programs show.

A free-running catch cannot be replayed as it is; each mutant's first one
is made replayable (stress.reproduce) and the reproducer replayed ten
times, which must give the same check every time.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from typing import TextIO

from policies import scenarios
from stress.hunt import hunt_one
from stress.replay import mismatch, replay
from stress.report import publish, write_json
from stress.reproduce import reproduce
from stress.runner import stop_if_interrupted

STRATEGIES = ("random", "swarm", "pct", "free")
FIRST_SEEDS = (0, 100_000, 200_000, 300_000, 400_000)
MAX_SEEDS = 300
MAX_SECONDS = 60.0
REPRODUCE_S = 60.0
REPLAYS = 10
TARGET_MEDIAN_S = 5.0
SLOW_S = 1.0


def bench_detection(
    json_path: str | None = None,
    *,
    quick: bool = False,
    plot: str | None = None,
    strategies=STRATEGIES,
    scenario: str | None = None,
    out: TextIO | None = None,
) -> dict:
    """Hunt every mutant by every strategy from each first seed (`quick`: two of them, the same
    budget); write the JSON and the chart."""
    out = out or sys.stdout
    first_seeds = FIRST_SEEDS[:2] if quick else FIRST_SEEDS
    max_seconds = MAX_SECONDS
    rows: list[dict] = []
    t0 = time.monotonic()
    try:
        for sc in scenarios().values():
            if scenario is not None and sc.name != scenario:
                continue
            for p in sc.mutants():
                rows.append(_hunted(sc.name, p, strategies, first_seeds, max_seconds))
                print(_line(rows[-1]), file=out, flush=True)
    except KeyboardInterrupt:
        if json_path:
            write_json(
                json_path,
                _summary(rows, strategies, first_seeds, max_seconds, time.monotonic() - t0) | {"interrupted": True},
            )
        raise
    doc = _summary(rows, strategies, first_seeds, max_seconds, time.monotonic() - t0)
    if scenario is not None and json_path and os.path.exists(json_path):
        doc = merged(json_path, doc, scenario, out)
    return publish(doc, detection_table(doc), json_path, out, plot, detection_plot)


def merged(path: str, doc: dict, scenario: str, out: TextIO) -> dict:
    """`doc` (one scenario hunted again) in place of that scenario's rows of the bench at `path`,
    if that was measured the same way (strategies, first seeds, budgets); else `doc` alone."""
    import json

    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return doc
    same = ("strategies", "first_seeds", "max_seeds", "max_seconds")
    if old.get("bench") != "detection" or any(old.get(k) != doc[k] for k in same):
        print(f"{path} was measured otherwise: it is replaced by {scenario}'s rows alone", file=out)
        return doc
    rows = [r for r in old["rows"] if r["scenario"] != scenario] + doc["rows"]
    merged_doc = _summary(rows, doc["strategies"], doc["first_seeds"], doc["max_seconds"], 0.0)
    merged_doc["seconds"] = round(old["seconds"] + doc["seconds"], 1)
    earlier = old.get("remeasured")
    merged_doc["remeasured"] = sorted({*(earlier if isinstance(earlier, list) else []), scenario})
    notes = list(old.get("notes", []))
    if isinstance(old.get("merged"), str):  # what an earlier hand-made merge said of itself
        notes.append(old["merged"])
    if isinstance(earlier, dict):
        notes.append(f"hunted again: {', '.join(earlier.get('mutants', []))} ({earlier.get('why', '')})")
    if notes:
        merged_doc["notes"] = notes
    return merged_doc


def _hunted(scenario: str, p, strategies, first_seeds, max_seconds: float) -> dict:
    """One mutant's row: each strategy's hunts from each first seed, the best, the reproducer."""
    row: dict = {"scenario": scenario, "mutant": p.name, "expected": list(p.expect), "strategies": {}}
    for strategy in strategies:
        hunts = [
            hunt_one(
                scenario,
                p.name,
                p.expect,
                max_seeds=MAX_SEEDS,
                first_seed=s,
                strategy=strategy,
                max_seconds=max_seconds,
            )
            for s in first_seeds
        ]
        right = [h for h in hunts if h.right_check]
        if strategy == "free" and right and right[0].run_report:
            row["reproduce"] = reproduction(right[0].run_report)
        row["strategies"][strategy] = {
            "caught": len(right),
            "hunts": len(hunts),
            "other_checks": sorted({c for h in hunts if not h.right_check for c in h.others}),
            "errors": [h.error for h in hunts if h.error],
            "median_seeds": statistics.median(h.seeds if h.right_check else MAX_SEEDS for h in hunts),
            "median_seconds": round(statistics.median(h.seconds if h.right_check else max_seconds for h in hunts), 3),
        }
    row["best"] = min(
        row["strategies"], key=lambda s: (-row["strategies"][s]["caught"], row["strategies"][s]["median_seconds"])
    )
    return row


def reproduction(report: dict) -> dict:
    """A free-running catch made replayable, and its reproducer replayed REPLAYS times."""
    found = reproduce(report, max_seconds=REPRODUCE_S)
    if found is None:
        return {"reproduced": False, "replayed": 0, "replays": 0}
    again = sum(
        mismatch(found.result.report, stop_if_interrupted(replay(found.result.report))) is None for _ in range(REPLAYS)
    )
    return {
        "reproduced": True,
        "window": found.window,
        "runs": found.runs,
        "seconds": found.seconds,
        "replayed": again,
        "replays": REPLAYS,
    }


def _line(row: dict) -> str:
    cells = []
    for s, r in row["strategies"].items():
        cells.append(f"{s} {r['caught']}/{r['hunts']} {r['median_seconds']:.1f}s")
    if "reproduce" in row:
        rp = row["reproduce"]
        cells.append(f"reproduced {rp['replayed']}/{rp['replays']}" if rp["reproduced"] else "NOT REPRODUCED")
    return f"{row['scenario'] + '/' + row['mutant']:<44} " + "  ".join(cells)


def _replayable(rp: dict) -> bool:
    return rp["reproduced"] and rp["replayed"] == rp["replays"]


def _summary(rows: list[dict], strategies, first_seeds, max_seconds: float, seconds: float) -> dict:
    best = [r["strategies"][r["best"]] for r in rows]
    caught_best = [b for b in best if b["caught"] * 2 > b["hunts"]]
    medians = sorted(b["median_seconds"] for b in best)
    overall = statistics.median(medians) if medians else 0.0
    tried = [r["reproduce"] for r in rows if "reproduce" in r]
    replayable = [x for x in tried if _replayable(x)]
    return {
        "schema": "mmtorture-bench/1",
        "bench": "detection",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus_online": os.cpu_count(),
        "cpus": 2,
        "strategies": list(strategies),
        "first_seeds": list(first_seeds),
        "max_seeds": MAX_SEEDS,
        "max_seconds": max_seconds,
        "seconds": round(seconds, 1),
        "rows": rows,
        "mutants": len(rows),
        "caught_by_best": len(caught_best),
        "caught_by": {
            s: sum(r["strategies"][s]["caught"] * 2 > r["strategies"][s]["hunts"] for r in rows) for s in strategies
        },
        "median_seconds_best": overall,
        "max_seconds_best": max(medians) if medians else 0.0,
        "free_caught": len(tried),
        "reproduced": len(replayable),
        "targets": {
            "caught_by_best": len(rows),
            "median_seconds_best": TARGET_MEDIAN_S,
            "max_seconds_best": MAX_SECONDS,
            "reproduced": len(tried),
        },
        "met": {
            "caught_by_best": len(caught_best) == len(rows),
            "median_seconds_best": overall <= TARGET_MEDIAN_S,
            "max_seconds_best": bool(medians) and max(medians) < MAX_SECONDS and len(caught_best) == len(rows),
            "reproduced": len(replayable) == len(tried),
        },
    }


def detection_table(doc: dict) -> str:
    """The README's table: mutants caught (by most hunts) per strategy, then the ones the best misses."""
    s = doc["strategies"]
    lines = [
        "| | " + " | ".join(s) + " | best of each mutant |",
        "|---" * (len(s) + 2) + "|",
        "| mutants caught | "
        + " | ".join(f"{doc['caught_by'][x]} / {doc['mutants']}" for x in s)
        + f" | {doc['caught_by_best']} / {doc['mutants']} |",
    ]
    missed = [r for r in doc["rows"] if r["strategies"][r["best"]]["caught"] * 2 <= r["strategies"][r["best"]]["hunts"]]
    met = doc["met"]
    lines.append("")
    lines.append(
        f"Blind, {doc['cpus']} CPUs, at most {doc['max_seeds']} seeds or {doc['max_seconds']:g} s per hunt, "
        f"{len(doc['first_seeds'])} first seeds per mutant and strategy. Median time to the first catch "
        f"with each mutant's best strategy: {doc['median_seconds_best']:.2f} s (target <= "
        f"{TARGET_MEDIAN_S:g} s: {'met' if met['median_seconds_best'] else 'MISSED'}); the slowest: "
        f"{doc['max_seconds_best']:.1f} s (target < {doc['max_seconds']:g} s: "
        f"{'met' if met['max_seconds_best'] else 'MISSED'}); every mutant caught: "
        f"{'met' if met['caught_by_best'] else 'MISSED'}."
        + (
            f" Hunted again since, against the model as it is now: {', '.join(doc['remeasured'])}."
            if doc.get("remeasured")
            else ""
        )
    )
    slow = sorted(
        (r for r in doc["rows"] if r["strategies"][r["best"]]["median_seconds"] >= SLOW_S),
        key=lambda r: -r["strategies"][r["best"]]["median_seconds"],
    )
    if slow:
        lines += [
            "",
            f"The mutants whose best median is {SLOW_S:g} s or more (caught by how many hunts, median "
            "seconds; a miss counts as the whole budget):",
            "",
            "| mutant | " + " | ".join(s) + " | best |",
            "|---" * (len(s) + 2) + "|",
        ]
        for r in slow:
            cells = [
                f"{x['caught']}/{x['hunts']}, {x['median_seconds']:.1f} s" for x in (r["strategies"][k] for k in s)
            ]
            lines.append(f"| {r['scenario']}/{r['mutant']} | " + " | ".join(cells) + f" | {r['best']} |")
    if doc.get("free_caught"):
        lines.append("")
        lines.append(
            f"Free-running catches made replayable (`mmtorture reproduce`, then replayed {REPLAYS} times, the "
            f"same check every time): {doc['reproduced']} of {doc['free_caught']}"
            + "".join(
                f"; not {r['scenario']}/{r['mutant']}"
                for r in doc["rows"]
                if "reproduce" in r and not _replayable(r["reproduce"])
            )
            + "."
        )
    if missed:
        lines.append("")
        lines.append(
            "Not caught by most hunts of any strategy: "
            + ", ".join(f"{r['scenario']}/{r['mutant']}" for r in missed)
            + "."
        )
    return "\n".join(lines)


def detection_plot(doc: dict, path: str) -> None:
    """Mutants caught (median time to the first catch) against time, one curve per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in [*doc["strategies"], "best"]:
        times = sorted(
            (r["strategies"][r["best"] if s == "best" else s] for r in doc["rows"]), key=lambda x: x["median_seconds"]
        )
        xs = [t["median_seconds"] for t in times if t["caught"] * 2 > t["hunts"]]
        ax.step(
            [max(x, 1e-3) for x in xs], range(1, len(xs) + 1), where="post", label=s, lw=2.2 if s == "best" else 1.2
        )
    ax.set_xscale("log")
    ax.axhline(doc["mutants"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("median seconds to the first blind catch")
    ax.set_ylabel("mutants caught")
    ax.set_title(f"Blind detection, {doc['mutants']} mutants ({doc['machine']}, {doc['cpus_online']} CPUs online)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
