"""The README's benchmark figures, rendered from `make bench`'s JSON, never typed in.

    python docs/figures.py bench          # copy bench/*.json to docs/bench/, rewrite README.md's sections
    python docs/figures.py --check        # README.md's sections are what docs/bench/*.json renders

Each generated section sits between `<!-- figures:NAME -->` and
`<!-- /figures:NAME -->` in README.md; `make bench` runs the first form, a
test the second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "bench")
README = os.path.join(ROOT, "README.md")
FILES = ("primitives", "scheduler", "vma", "pte_ref", "detection", "campaign")
LABELS = {
    "fetch_add_ns": "fetch_add, one process",
    "fetch_add_contended_2proc_ns": "fetch_add, 2 processes on one word (per process)",
    "rcu_read_lock_unlock_ns": "rcu_read_lock + rcu_read_unlock",
    "spin_lock_unlock_ns": "spin_lock + spin_unlock (owner, preempt count, trace event)",
    "refcount_get_put_ns": "refcount get + put",
    "atomics_pypi_fetch_add_ns": "fetch_add through PyPI `atomics`",
    "speedup_vs_atomics": "speed-up over `atomics`",
}


def _n(v: float | int | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}" if abs(v) >= 10 else f"{v:,.1f}{unit}"


def primitives(doc: dict) -> str:
    res, targets = doc["results"], doc["targets"]
    rows = ["| measure | ns per operation | target | |", "|---|---:|---|---|"]
    for key, label in LABELS.items():
        if key not in res:
            continue
        t, verdict = targets.get(key), doc["verdict"].get(key, "")
        if key.startswith("speedup"):
            rows.append(f"| {label} | {_n(res[key], 'x')} | {'' if t is None else f'>= {t:g}x'} | {verdict} |")
        else:
            rows.append(f"| {label} | {_n(res[key])} | {'' if t is None else f'< {t:g}'} | {verdict} |")
    return "\n".join(rows) + (
        f"\n\nPython {doc['python']}, best of {doc['repeats']} repeats of {doc['iterations']:,} iterations."
    )


def scheduler(doc: dict) -> str:
    res = doc["results"]
    rows = [
        "| measure | per second | target | |",
        "|---|---:|---|---|",
        f"| bare futex ping-pong between two Python processes (switches) | {res['pingpong_switches_per_s']:,} | | |",
    ]
    for cpus in (2, 4):
        key = f"controlled_switches_per_s_{cpus}cpu"
        t = doc["targets"].get(key)
        met = "" if key not in doc["met"] else "met" if doc["met"][key] else "MISSED"
        rows.append(
            f"| controlled switches, {cpus} CPUs | {res[key]:,} | {'' if t is None else f'>= {t:,.0f}'} | {met} |"
        )
    rows.append(f"| controlled scheduling decisions, 2 CPUs | {res['controlled_decisions_per_s_2cpu']:,} | | |")
    rows += [
        "",
        "| scenario/policy (2 CPUs) | free | random | pct | no preemption | armed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in res["scenarios"].items():
        np_ = row["no_preemption"]
        rows.append(
            f"| {name} | {row['free_ops_per_s']:,} | {row['random_ops_per_s']:,} "
            f"| {row['pct_ops_per_s']:,} | {np_['points_at_calls']:,} | {np_['ratio']:.2f}x |"
        )
    cost_met, armed_met = doc["met"]["ratio_to_pingpong"], doc["met"]["no_preemption_ratio"]
    return "\n".join(rows) + (
        f"\n\nOperations per second. *No preemption*: one program under the controlled scheduler with "
        f"scheduling points only where the code calls it; *armed*: the same run with an access point "
        f"armed in every operation and never reached, against it: {doc['no_preemption_ratio']:.2f}x "
        f"(geometric mean; the slowest {doc['no_preemption_slowest']:.2f}x; target >= "
        f"{doc['targets']['no_preemption_ratio']}: {'met' if armed_met else 'MISSED'}). The controlled scheduler costs "
        f"{doc['ratio_to_pingpong']:.2f}x a bare ping-pong per switch (target <= 1.0: "
        f"{'met' if cost_met else 'MISSED'})."
    )


def vma(doc: dict) -> str:
    sys.path.insert(0, ROOT)
    from stress.bench_vma import vma_table

    return vma_table(doc)


def pte_ref(doc: dict) -> str:
    sys.path.insert(0, ROOT)
    from stress.bench_pte_ref import pte_ref_table

    return pte_ref_table(doc)


def detection(doc: dict) -> str:
    sys.path.insert(0, ROOT)
    from stress.detection import detection_table

    return detection_table(doc)


def campaign(doc: dict) -> str:
    sys.path.insert(0, ROOT)
    from stress.campaign.bench import campaign_table

    return campaign_table(doc)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def pte_ref_sizes() -> str:
    """The pte_ref seed's table, computed by the model's geometry code (not typed in)."""
    sys.path.insert(0, ROOT)
    from policies.mm.geometry import PMD_LEVEL, PTE_LEVEL, Geometry, max_table_bytes

    machines = (
        ("32-bit: 3 GiB of user space, 4 KiB pages, 4-byte entries", 3 << 30, 4),
        ("64-bit: 48-bit addresses, 4 KiB pages, 8-byte entries", 1 << 48, 8),
    )
    rows = [
        "| the most one process's tables can take | " + " | ".join(m for m, _, _ in machines) + " |",
        "|---|---:|---:|",
    ]
    for name, level in (("PTE tables", PTE_LEVEL), ("PMD tables", PMD_LEVEL)):
        rows.append(
            f"| {name} | " + " | ".join(_size(max_table_bytes(b, 4096, e, level)) for _, b, e in machines) + " |"
        )
    g = Geometry()
    return "\n".join(rows) + (
        f"\n\nThe model's default geometry maps {g.pages} pages with {g.pte}-entry PTE tables: at most "
        f"{g.pages // g.pte} PTE tables per mm, so that CPUs meet on them."
    )


COMPUTED = {"pte_ref_sizes": pte_ref_sizes}
RENDER = {
    "primitives": primitives,
    "scheduler": scheduler,
    "vma": vma,
    "pte_ref": pte_ref,
    "detection": detection,
    "campaign": campaign,
}


def load(name: str, where: str = DATA) -> dict:
    with open(os.path.join(where, f"{name}.json")) as f:
        return json.load(f)


def sections(text: str) -> dict[str, tuple[int, int]]:
    out = {}
    for m in re.finditer(r"<!-- figures:(\w+) -->\n", text):
        end = text.index(f"<!-- /figures:{m.group(1)} -->", m.end())
        out[m.group(1)] = (m.end(), end)
    return out


def render_readme(text: str, where: str = DATA) -> str:
    """Every section replaced by its rendering, the last first (so earlier offsets hold)."""
    for name, (start, end) in sorted(sections(text).items(), key=lambda kv: -kv[1][0]):
        body = COMPUTED[name]() if name in COMPUTED else RENDER[name](load(name, where))
        text = text[:start] + body + "\n" + text[end:]
    return text


def main(argv: list[str]) -> int:
    with open(README) as f:
        text = f.read()
    if argv == ["--check"]:
        if render_readme(text) != text:
            print("README.md's figures are not what docs/bench/*.json renders: run `make bench`", file=sys.stderr)
            return 1
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    os.makedirs(DATA, exist_ok=True)
    for name in FILES:
        src, dst = os.path.join(argv[0], f"{name}.json"), os.path.join(DATA, f"{name}.json")
        if not os.path.samefile(os.path.dirname(src) or ".", DATA):
            shutil.copy(src, dst)
    with open(README, "w") as f:
        f.write(render_readme(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
