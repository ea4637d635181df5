"""A controlled run drawn as the seeds draw their races: one column per CPU, time downwards.

The pte_ref document draws "thread A / thread B / thread C" side by side,
each step on the line of the moment it happens (pte_ref-doc-qi-zheng-2021.txt,
"the following case may happen").  A controlled run has that order for real:
one CPU runs at a time, and every hand-over of the token is a `switch` event
in the CPU's trace ring, stamped with the scheduler's decision number
(stress.schedulers.state.switch_arg).  Cutting each ring at its switches
gives the CPU's turns; sorting the turns by their stamps gives the run's
time line, down to the first finding.  A ring keeps its last TRACE_LEN
events, so a long run is drawn from the first turn that every ring still
holds, and the drawing says how many turns it leaves out: shrink first.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

from shm.events import TRACE_LEN
from stress.schedulers.state import BLOCKED, EXITED, SWITCH_STEP_BITS, YIELDED, split_switch, where_in_operation

NOT_DRAWN = ("none", "op-end")
HANDED_OVER = {BLOCKED: "(waits)", YIELDED: "(spins)", EXITED: ""}
WIDTH = 100
INF = float("inf")


def true_step(stamp: int, decisions: int) -> int:
    """A switch's decision number from its SWITCH_STEP_BITS-wide stamp: the latest one congruent
    to it among the run's `decisions` (a ring keeps the last events, far fewer than 2**25)."""
    return decisions - 1 - ((decisions - 1 - stamp) % (1 << SWITCH_STEP_BITS))


def interleaving(
    traces: Sequence[Sequence[tuple[int, str, str, int]]],
    calls: Sequence[Sequence[str]],
    started: Sequence[int],
    deviations: Sequence[Sequence[Sequence[int]]],
    finding: tuple[int, int, str] | None,
    decisions: int,
    free_at: Sequence[int] = (),
) -> dict[str, Any]:
    """The run's time line from the participants' traces (the CPUs', then the grace-period
    kthread's; each event (sequence number, event, what it names, its argument), oldest first):
    rows [slot, kind, text], kind one of op, event, preempt, finding, lost; and the turns drawn,
    [slot, whom it handed the token to].  `calls[cpu][i]` is the i-th operation of the CPU as a
    call, `started[cpu]` how many it began, `finding` the first finding's (slot, sequence, text),
    `decisions` how many the scheduler took.  What a participant did from sequence number
    `free_at[slot]` on, once the run was no longer controlled, has no place in one time line: it
    is counted, not drawn."""
    ncpus = len(started)
    turns: list[tuple[float, int, list[list], bool, int]] = []
    first_switch: dict[int, float] = {}  # a wrapped ring's oldest kept switch
    holder, last = -1, -1
    untimed = 0
    for slot, events in enumerate(traces):
        wrapped = bool(events) and events[0][0] != 0
        ops_left = sum(name == "op-begin" for _, name, _, _ in events)
        devs = deviations[slot] if slot < len(deviations) else []
        devs_left = sum(name == "switch" and split_switch(a)[2] for _, name, _, a in events)
        rows: list[list] = [[slot, "lost", "..."]] if wrapped else []
        partial = wrapped
        window = None
        free = free_at[slot] if slot < len(free_at) and free_at[slot] >= 0 else INF
        for k, (seq, name, what, arg) in enumerate(events):
            if seq >= free:
                untimed += sum(n not in NOT_DRAWN for _, n, _, _ in events[k:])
                break
            if name == "op-begin":
                i = started[slot] - ops_left if slot < ncpus else -1
                ops_left -= 1
                call = calls[slot][i] if slot < len(calls) and 0 <= i < len(calls[slot]) else f"{what}(...)"
                rows.append([slot, "op", call])
            elif name == "finding" and finding is not None and (slot, seq) == finding[:2]:
                rows.append([slot, "finding", finding[2]])
            elif name == "window":
                window = what
            elif name == "switch":
                stamp, target, deviated, state = split_switch(arg)
                step = true_step(stamp, decisions)
                point = None
                if deviated:
                    j = len(devs) - devs_left
                    devs_left -= 1
                    point = devs[j][1] if 0 <= j < len(devs) else None
                if state in HANDED_OVER:  # it could not go on: blocked, spinning or done
                    text = HANDED_OVER[state]
                elif window:
                    text = f"(preempted at {window})"
                else:
                    text = "(preempted" + ("" if point is None else " " + where_in_operation(point)) + ")"
                if text and any(r[1] != "lost" for r in rows):
                    rows.append([slot, "preempt", text])
                if step > last:
                    holder, last = target, step
                if partial:
                    first_switch[slot] = step
                turns.append((step, slot, rows, partial, target))
                rows, partial, window = [], False, None
            elif name not in NOT_DRAWN:
                _add_event(rows, slot, name, what)
        if any(r[1] != "lost" for r in rows):
            turns.append((INF, slot, rows, partial, -1))
        if wrapped and slot not in first_switch:
            first_switch[slot] = INF
    turns.sort(key=lambda t: (t[0], t[1] != holder, t[1]))
    end = next((t[0] for t in turns if any(r[1] == "finding" for r in t[2])), INF)
    # drawn from the first turn that every ring holds, up to the finding; a ring whose oldest kept
    # switch comes after the finding lost all it did before it
    start = max((k for k in first_switch.values() if k <= end), default=-1.0)
    overwritten = sorted(s for s, k in first_switch.items() if k > end)
    out: list[list] = []
    handovers: list[list[int]] = []
    not_drawn = 0
    for key, slot, rows, partial, target in turns:
        if key < start or (partial and key != start):
            not_drawn += any(r[1] not in ("lost", "preempt") for r in rows)
            continue
        out += rows if partial else [r for r in rows if r[1] != "lost"]
        handovers.append([slot, target])
        if any(r[1] == "finding" for r in rows):
            out = out[: next(i for i, r in enumerate(out) if r[1] == "finding") + 1]
            break
    else:
        if finding is not None:
            out.append([-1, "finding", finding[2]])
    shown = {r[0] for r in out if r[1] != "lost"}
    who = lambda s: "gp kthread" if s == ncpus else f"cpu{s}"  # noqa: E731
    return {
        "names": [[s, who(s)] for s in range(len(traces)) if s in shown],
        "rows": out,
        "not_drawn": not_drawn,
        "turns": handovers,
        "untimed": 0 if end != INF else untimed,
        "overwritten": [who(s) for s in overwritten],
    }


PAIRS = {"unlock": "lock", "read-unlock": "read-lock", "irq-on": "irq-off", "srcu-unlock": "srcu-lock"}
NAMED = ("lock", "unlock", "read-lock", "read-unlock", "block", "wake")


def _add_event(rows: list[list], slot: int, name: str, what: str) -> None:
    """An event's row; a lock taken and released with nothing between is one row, and a lock is
    named without its segment (`page[3].ptl`, not `machine:page[3].ptl`)."""
    if name in NAMED:
        what = what.rsplit(":", 1)[-1]
    opened = PAIRS.get(name)
    if opened and rows and rows[-1][1] == "event" and rows[-1][2] == f"{opened} {what}".rstrip():
        rows[-1][2] = f"{opened}, {name} {what}".rstrip()
        return
    rows.append([slot, "event", f"{name} {what}".rstrip()])


def columns(report: dict, width: int = WIDTH) -> list[str]:
    """The drawing as text to paste into a mail; [] for a run that has none (a free-running one)."""
    inter = report.get("interleaving")
    if not inter or not inter["rows"]:
        return []
    order = [s for s, _ in inter["names"]]
    colw = max(22, min(48, width // max(1, len(order))))
    lines = []
    if inter["not_drawn"]:
        lines.append(
            f"({inter['not_drawn']} earlier turns not drawn: each CPU's trace keeps its last {TRACE_LEN} events)"
        )
    for who in inter.get("overwritten", []):
        lines.append(f"({who}: what it did before the finding was overwritten in its trace by what it did after)")
    lines.append("".join(name.ljust(colw) for _, name in inter["names"]).rstrip())
    lines.append("".join(("=" * len(name)).ljust(colw) for _, name in inter["names"]).rstrip())
    lines.append("")
    for slot, kind, text in inter["rows"]:
        col = order.index(slot) if slot in order else 0
        pad = " " * (col * colw)
        if kind == "finding" and slot < 0 and inter.get("untimed"):
            lines.append(f"(then {inter['untimed']} events ran free of the scheduler: not drawn)")
        if kind == "finding":  # the whole width, at the bottom: its headline names the CPU
            lines += _wrap(text, width, "")
            continue
        indent = "" if kind in ("op", "lost") else "  "
        lines += [(pad + s).rstrip() for s in _wrap(text, colw - 2, indent)]
    return lines


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """Lines of a cell; names (`pair:between-the-two-locks`, `mm[0].mmap_lock`) are not broken."""
    return textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def plot(report: dict, path: str, title: str | None = None) -> bool:
    """The drawing as an image (the campaign report's); False without matplotlib or a drawing."""
    inter = report.get("interleaving")
    if not inter or not inter["rows"]:
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [s for s, _ in inter["names"]]
    colw, char_in = 44, 0.075  # characters a column holds; inches a 9-point monospace character takes
    rows: list[tuple[int, str, str]] = []
    for slot, kind, text in inter["rows"]:
        col = 0 if kind == "finding" else order.index(slot) if slot in order else 0
        room = len(order) * colw - 4 if kind == "finding" else colw - 2
        rows += [(col, kind, s) for s in _wrap(text, room, "")]
    top = 1 if title else 0
    ncols, nrows = max(1, len(order)), len(rows) + 2 + top
    fig = plt.figure(figsize=(char_in * colw * ncols + 0.4, 0.22 * nrows + 0.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, ncols)
    ax.set_ylim(nrows + 0.5, -0.5)
    ax.axis("off")
    style: dict[str, dict[str, Any]] = {
        "op": {"weight": "bold"},
        "event": {"color": "0.35"},
        "preempt": {"color": "tab:blue", "style": "italic"},
        "finding": {"color": "tab:red", "weight": "bold"},
        "lost": {"color": "0.5"},
    }
    if title:
        ax.text(0.03, 0, title, size=10, va="center")
    for c, (_, name) in enumerate(inter["names"]):
        ax.text(c + 0.03, top, name, family="monospace", weight="bold", va="center")
        ax.plot([c + 0.03, c + 0.9], [top + 0.6, top + 0.6], color="0.2", lw=1)
    prev = None
    for y, (col, kind, text) in enumerate(rows, start=2 + top):
        if prev is not None and col != prev:
            ax.axhline(y - 0.5, color="0.85", lw=0.6)
        prev = col
        indent = 0.0 if kind in ("op", "finding", "lost") else 0.04
        ax.text(col + 0.03 + indent, y, text, family="monospace", size=9, va="center", **style[kind])
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
