"""The race diagram: a controlled run's turns in the order the scheduler gave them, a column per CPU."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from policies import get_scenario
from stress.program import call_text
from stress.race import columns, interleaving, plot, true_step
from stress.schedulers.state import EXITED, RUNNABLE, SWITCH_STEP_BITS, split_switch, switch_arg
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
        for seed in range(3, 23):  # a long run whose rings still overlap (not one CPU running alone at the end)
            r = mmtorture_run("vma_lookup", "per_vma_lock", cpus=3, ops=ops, seed=seed, scheduler="random")
            assert r.findings == []
            inter = r.report["interleaving"]
            rows, turns = inter["rows"], inter["turns"]
            if len(turns) > (2 if wrapped else 10):  # a long run is drawn from what every ring still holds
                break
        else:
            raise AssertionError(f"no run of {ops} operations drawn with enough turns")
        for (_, target), (slot, _) in zip(turns, turns[1:]):
            assert target in (slot, -1), turns
        assert (inter["not_drawn"] > 0) == wrapped and (rows[0][1] == "lost") == wrapped
        assert len({s for s, _, _ in rows}) >= (2 if wrapped else 3)  # the ones that ran at the end
        held: dict[str, str] = {}
        for _, _, text in rows:
            if m := re.fullmatch(r"(alloc|free) (pfn \d+)", text):
                assert held.get(m[2]) != m[1], f"{m[2]}: {m[1]} twice in a row in {rows}"
                held[m[2]] = m[1]
        assert len(held) >= (1 if wrapped else 3), rows  # frames allocated and freed in the drawn time
        ends = [int(t.split()[-1]) for _, _, t in rows if t.startswith("gp-end")]
        assert ends == sorted(ends)
        sc = get_scenario("vma_lookup")
        ops = {op.name: op for op in sc.operations(sc.policy("per_vma_lock"))}
        for cpu, prog in enumerate(r.report["program"]):
            calls = [call_text(ops[op[0]], op[1:]) for op in prog]
            drawn = _ops(rows, cpu)
            assert drawn == (calls[len(calls) - len(drawn) :] if wrapped else calls)  # the last ones, or all
        if not wrapped:
            assert sum(len(p) for p in r.report["program"]) == sum(len(_ops(rows, cpu)) for cpu in range(3))


def test_a_finding_of_the_quiescent_checks_is_drawn_after_the_time_line(mmtorture_run):
    """A leak found by the sweeps after every CPU stopped has no CPU's column: it is the last
    line, below the turns, and what ran once the scheduler let go is counted, not drawn."""
    r = mmtorture_run("context", "leak", cpus=2, ops=30, seed=0, scheduler="random")
    assert r.findings and r.findings[0].where == "the quiescent checks", [f.headline() for f in r.findings]
    inter = r.report["interleaving"]
    assert inter["rows"][-1][:2] == [-1, "finding"] and inter["rows"][-1][2] == r.findings[0].headline()
    assert [row for row in inter["rows"] if row[1] == "finding"] == inter["rows"][-1:]
    assert columns(r.report)[-1].strip().endswith(r.findings[0].message.split()[-1])


def test_a_switch_stamp_says_whom_why_and_when():
    for step in (0, 5, (1 << SWITCH_STEP_BITS) - 1, (1 << SWITCH_STEP_BITS) + 7):
        for target, deviated, state in ((0, True, RUNNABLE), (3, False, EXITED)):
            stamp, t, d, s = split_switch(switch_arg(step, target, deviated, state))
            assert (t, d, s) == (target, deviated, state)
            decisions = step + 40
            assert true_step(stamp, decisions) == step  # the latest decision with that stamp


@st.composite
def _schedules(draw):
    """A controlled run as the rings record it: turns of CPUs (never two in a row of one CPU),
    each a few marked events and a switch to the next, stamped with increasing decisions; the
    rings keep their last `keep` events; one CPU may run on after the scheduler let go."""
    ncpus = draw(st.integers(2, 3))
    order = [draw(st.integers(0, ncpus - 1))]
    for _ in range(draw(st.integers(1, 14))):
        order.append(draw(st.sampled_from([c for c in range(ncpus) if c != order[-1]])))
    step = draw(st.integers(0, 3 << SWITCH_STEP_BITS))
    rings: list[list] = [[] for _ in range(ncpus + 1)]
    truth = []
    for t, cpu in enumerate(order):
        for j in range(draw(st.integers(0, 3))):
            rings[cpu].append(("mark", f"t{t}.{j}", 0))
            truth.append((cpu, f"mark t{t}.{j}"))
        if t + 1 < len(order):
            step += draw(st.integers(1, 9))
            rings[cpu].append(("switch", "", switch_arg(step, order[t + 1], True, RUNNABLE)))
    free = draw(st.integers(0, ncpus))
    free_at = [-1] * (ncpus + 1)
    free_at[free] = len(rings[free])
    rings[free] += [("mark", "after", 0)] * draw(st.integers(1, 50))
    keep = draw(st.integers(1, 40))
    traces = [[(seq, n, w, a) for seq, (n, w, a) in enumerate(ring)][-keep:] for ring in rings]
    return ncpus, traces, truth, step + 1, free_at


@settings(max_examples=300, deadline=None)
@given(_schedules())
def test_any_schedule_is_drawn_in_the_order_it_ran(schedule):
    """Whatever the turns and however much the rings kept: the drawing is the run's own order,
    from some turn on, with nothing left out after it and nothing from after the scheduler let go;
    and when every ring kept everything, it is all of it."""
    ncpus, traces, truth, decisions, free_at = schedule
    devs = [[[0, -1, 0]] * sum(n == "switch" for _, n, _, _ in tr) for tr in traces]
    inter = interleaving(traces, [[] for _ in range(ncpus)], [0] * ncpus, devs, None, decisions, free_at)
    drawn = [(s, text) for s, kind, text in inter["rows"] if kind == "event"]
    kept = {(slot, f"mark {w}") for slot, tr in enumerate(traces) for _, n, w, _ in tr if n == "mark"}
    assert all(text != "mark after" for _, text in drawn)
    if drawn:
        first = truth.index(drawn[0])
        assert drawn == [e for e in truth[first:] if e in kept]
    if all(tr[0][0] == 0 for tr in traces if tr):
        assert drawn == truth and inter["not_drawn"] == 0
