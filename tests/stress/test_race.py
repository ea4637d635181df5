"""The race diagram: a controlled run's turns in the order the scheduler gave them, a column per CPU."""

from __future__ import annotations

import re

from stress.race import columns, plot
from stress.shrink import shrink


def _ops(rows: list, slot: int) -> list[str]:
    return [text for s, kind, text in rows if s == slot and kind == "op"]


def test_a_shrunk_race_reads_like_the_seeds_diagrams(mmtorture_run, tmp_path):
    """rcu/no_wait_gp shrunk: the reader begins, is preempted inside its critical section, the
    writer replaces and frees, and the finding is the last line, in the reader's name."""
    r = mmtorture_run("rcu", "no_wait_gp", cpus=2, ops=300, seed=0, scheduler="random")
    assert "rcu.pipe-age" in r.checks
    res = shrink(r.report, max_runs=400)
    inter = res.final.report["interleaving"]
    rows = inter["rows"]
    assert inter["not_drawn"] == 0 and [n for _, n in inter["names"]] == ["cpu0", "cpu1"]
    reader = next(cpu for cpu, prog in enumerate(res.after.program) if ["read"] in prog)
    writer = 1 - reader
    kinds = [(s, kind) for s, kind, _ in rows]
    begin, preempted = kinds.index((reader, "op")), kinds.index((reader, "preempt"))
    freed = next(i for i, (s, kind, text) in enumerate(rows) if s == writer and text.startswith("free pfn"))
    assert begin < preempted < kinds.index((writer, "op")) < freed < len(rows) - 1
    assert "inside-the-critical-section" in rows[preempted][2]
    assert rows[-1][1] == "finding" and rows[-1][2].startswith(f"[rcu.pipe-age] cpu {reader} in read")
    text = columns(res.final.report)
    assert text[0].split() == ["cpu0", "cpu1"] and text[1].split() == ["====", "===="]
    col = text[0].index("cpu1")
    assert text[3 + begin].startswith(" " * col if reader == 1 else "read()")  # the reader's column
    assert text[-2].startswith("[rcu.pipe-age]") and all(len(line) <= 100 for line in text)
    assert plot(res.final.report, str(tmp_path / "race.png"), title="rcu.pipe-age")
    assert (tmp_path / "race.png").stat().st_size > 0


def test_turns_are_in_the_order_they_ran(mmtorture_run):
    """Merged by the switch stamps, the CPUs' traces keep what a single time line must: each turn
    is that of the CPU the previous one handed the token to (the switch's target, which the
    ordering does not use), a page frame is allocated and freed alternately whichever CPU does it,
    grace periods end in order, and each CPU's operations are its program's, in order.  A run
    longer than the trace rings is drawn from the first turn they all still hold, and says how
    much it leaves out."""
    for ops, wrapped in ((6, False), (200, True)):
        r = mmtorture_run("vma_lookup", "per_vma_lock", cpus=3, ops=ops, seed=3, scheduler="random")
        assert r.findings == []
        inter = r.report["interleaving"]
        rows, turns = inter["rows"], inter["turns"]
        assert len(turns) > 10
        for (_, target), (slot, _) in zip(turns, turns[1:]):
            assert target in (slot, -1), turns
        assert (inter["not_drawn"] > 0) == wrapped and (rows[0][1] == "lost") == wrapped
        assert len({s for s, _, _ in rows}) >= (2 if wrapped else 3)  # the ones that ran at the end
        held: dict[str, str] = {}
        for _, _, text in rows:
            if m := re.fullmatch(r"(alloc|free) (pfn \d+)", text):
                assert held.get(m[2]) != m[1], f"{m[2]}: {m[1]} twice in a row in {rows}"
                held[m[2]] = m[1]
        ends = [int(t.split()[-1]) for _, _, t in rows if t.startswith("gp-end")]
        assert ends == sorted(ends)
        for cpu, prog in enumerate(r.report["program"]):
            calls = [f"{op[0]}(" for op in prog]
            drawn = [t[: t.index("(") + 1] for t in _ops(rows, cpu)]
            assert drawn == (calls[len(calls) - len(drawn) :] if wrapped else calls)  # the last ones, or all
        if not wrapped:
            assert sum(len(p) for p in r.report["program"]) == sum(len(_ops(rows, cpu)) for cpu in range(3))
