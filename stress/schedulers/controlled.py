"""Controlled scheduling: exactly one CPU process runs at a time, and a strategy picks which.

A token in shared memory names the running CPU; every other CPU (the
grace-period kthread included) sleeps on its own futex word.  The running
CPU gives the token away only at scheduling points: any shared access
(every load, store and atomic through shm is a step counted in C; the
scheduler is entered at the access a strategy armed the countdown for, so an
access that is not chosen costs an increment), `cpu.window()` (a hint: the
strategies weigh it more), a spin (it yields; when the spin names the word
it waits on, it is not run again until that word changes), a futex wait (it
blocks on the word), an operation boundary, and its exit.  At each point the CPU holding the token asks the
strategy (random, pct, replay: one file each, like shuttle's scheduler/)
which CPU runs next, stores the token, wakes that CPU's word and sleeps on
its own: a switch is one futex handoff, never a poll.

Every decision is data.  A decision is anchored at the deciding CPU's
(operation index, point within that operation): a point n >= 1 is just before the operation's n-th shared
access; -1 is its end (its boundary); -2 - w is its w-th window or spin.
Windows and boundaries are counted apart from accesses, so they keep their
meaning when an earlier operation is removed and the access counts shift
(shrinking), and when access-level preemptions are added or dropped.  The schedule records only
the decisions that differ from the default (the current CPU keeps running;
when it cannot, the next runnable CPU in slot order), so a schedule is a
short list of preemptions.  Shrinking removes them one by one, and they keep
their meaning when other operations of the program are removed.

Time is virtual: a wait with a timeout ends by timeout only when no CPU can
run otherwise.  When every CPU is blocked the machine is deadlocked for
certain, and the scheduler says so, naming what each CPU waits on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from shm._atomic import accesses, cpu_relax, record, recorded, set_countdown, set_hook

from shm.checks import LOCK_DEADLOCK_CYCLE, SCHED_ALL_BLOCKED, SCHED_LIVELOCK, Check
from shm.events import EV
from shm.sched import OsScheduler
from stress.schedulers.state import (
    AT_BOUNDARY,
    BLOCKED,
    CONTROLLED,
    DEVIATION,
    EXITED,
    MAX_PROFILE_OPS,
    RUNNABLE,
    YIELDED,
    SchedState,
    switch_arg,
)

if TYPE_CHECKING:
    from shm._atomic import Memory

    from shm.cpu import Cpu
    from shm.protocols import CpuLike

ACCESS, WINDOW, OTHER, BOUNDARY = "access", "window", "other", "boundary"
LIVELOCK_DECISIONS = 200_000
SPIN_TURN_LOOPS = 2000
TURN_TIMEOUT_S = 1.0
_EV_SWITCH, _EV_WINDOW = EV["switch"], EV["window"]


class Strategy(Protocol):
    """Which CPU runs next (shuttle's Scheduler trait).  State shared across the
    processes lives in the SchedState; whoever holds the token decides."""

    name: str
    preempts_accesses: bool  # whether countdown() ever arms an access point

    def init(self, st: SchedState) -> None:
        """In the runner, once, before any CPU runs."""

    def first(self, st: SchedState) -> int:
        """The CPU that runs first."""

    def choose(self, st: SchedState, cur: int, cands: list[int], default: int, step: int, why: str) -> int:
        """One of cands; cur is the deciding CPU, default what runs without a preemption, why the
        kind of point (ACCESS: the countdown this strategy armed ran out; WINDOW; OTHER)."""

    def countdown(self, st: SchedState, cur: int, gaccess: int) -> int:
        """Accesses cur makes before its next ACCESS point (0: none), once it runs with the whole
        run's count of accesses at gaccess.  Asked only at an operation's start, at an ACCESS
        point and when cur gets the token back: a decision that keeps cur running in its operation
        leaves the countdown in C running, so the answer must not depend on anything such a
        decision changes."""

    def describe(self) -> dict:
        """Parameters to record with the schedule."""


@dataclass
class Replay:
    """A schedule to follow: the first CPU and, per slot, {(op, point): target}."""

    first: int
    deviations: list[dict[tuple[int, int], int]]
    strict: bool = True
    steps: int | None = None

    @classmethod
    def from_schedule(cls, schedule: dict, nparts: int, strict: bool = True) -> Replay:
        devs = schedule.get("deviations") or []
        if len(devs) > nparts:
            raise ValueError(f"schedule has {len(devs)} CPUs, the run has {nparts}")
        table: list[dict[tuple[int, int], int]] = [{} for _ in range(nparts)]
        for i, lst in enumerate(devs):
            for entry in lst:
                op, point, target = (int(x) for x in entry)
                if not 0 <= target < nparts:
                    raise ValueError(f"schedule: cpu {i} switches to cpu {target}, the run has {nparts}")
                table[i][(op, point)] = target
        first = int(schedule.get("first", 0))
        if not 0 <= first < nparts:
            raise ValueError(f"schedule starts on cpu {first}, the run has {nparts}")
        return cls(first, table, strict, schedule.get("steps") if strict else None)


@dataclass
class ControlledScheduler(OsScheduler):
    """The per-process side of the controlled scheduler (shm's Scheduler protocol)."""

    strategy: Strategy
    segment: str
    replay: Replay | None = None
    name: str = "controlled"
    free: bool = False
    _seg_index: dict[int, int] = field(default_factory=dict)

    def attach(self, cpu: CpuLike) -> None:
        self.cpu = cast("Cpu", cpu)  # the machine's own CPU: the scheduler reads its whole state
        self.st = st = SchedState.attach(self.segment)
        self.mem = st.mem
        self.cpu_id = cpu.id
        if not 0 <= self.cpu_id < st.nparts:
            raise ValueError(f"cpu {cpu.id} is not a participant of the controlled scheduler")
        self.op = 0
        self.base = self.synced = accesses()
        self.armed = False
        self.npoints = 0
        self.window_name = ""
        table = self.replay.deviations[self.cpu_id] if self.replay else None
        self.table = table or None
        # looked up apart: an access point is reached only through the countdown, a window or a boundary never
        self.access_table = {k: v for k, v in (table or {}).items() if k[1] > 0} or None
        self.point_table = {k: v for k, v in (table or {}).items() if k[1] <= 0} or None
        self.anchors: dict[int, list[int]] = {}
        for op, point in table or ():
            if point > 0:
                self.anchors.setdefault(op, []).append(point)
        for lst in self.anchors.values():
            lst.sort()
        self.used: set[tuple[int, int]] = set()
        self.ndev = 0
        self.worker_slots = range(st.nparts - 1)
        self.spin_slots = len(os.sched_getaffinity(0)) - 1  # the running CPU has a core; spinners take the rest
        self.opstart = None
        if st.rec_cap:
            cpu_id = self.cpu_id
            self.opstart = st.seg.view("opstart")[cpu_id * MAX_PROFILE_OPS : (cpu_id + 1) * MAX_PROFILE_OPS]
            self.opstart[:] = -1
            self.opstart[0] = 0
            self.opclock = st.seg.view("opclock")[cpu_id * MAX_PROFILE_OPS : (cpu_id + 1) * MAX_PROFILE_OPS]
            record(st.seg.view("rec")[cpu_id * st.rec_cap : (cpu_id + 1) * st.rec_cap])
        set_hook(self._on_access)
        self.arms = self.strategy.preempts_accesses or bool(self.anchors) or self.opstart is not None
        self.counts = self.strategy.preempts_accesses or self.opstart is not None

    # -- the Scheduler protocol -------------------------------------------
    def begin(self, cpu: CpuLike) -> None:
        self._wait_turn()
        self.base = self.synced = accesses()
        if self.opstart is not None:
            self.opstart[0] = recorded()
            self.opclock[0] = self.mem.load64(self.st.accesses_off)
        self._arm(self.base)

    def window(self, cpu: CpuLike, name: str) -> bool:
        self.window_name = name
        return not self.free and self._point(RUNNABLE, WINDOW)

    def op_boundary(self, cpu: CpuLike) -> None:
        if not self.free:
            self._point(RUNNABLE, BOUNDARY, next_op=True)

    def spin(
        self, cpu: CpuLike, attempt: int, mem: Memory | None = None, off: int = 0, seen: int = 0, bits: int = 32
    ) -> None:
        if self.free:
            return super().spin(cpu, attempt)
        if mem is None:
            self._point(YIELDED, OTHER)
        else:
            self._watch(mem, off, seen, bits, False)
            self._point(BLOCKED, OTHER)

    def block(self, cpu: CpuLike, mem: Memory, off: int, expected: int, timeout: float | None) -> bool:
        if self.free:
            return mem.futex_wait(off, expected, timeout)
        self._watch(mem, off, expected, 32, timeout is not None)
        self._point(BLOCKED, OTHER)
        return mem.load32(off) != expected

    def exit(self, cpu: CpuLike) -> None:
        set_hook(None)
        if self.opstart is not None:
            self.mem.store64(self.st.nrec_off[self.cpu_id], recorded())
            record(None)
            self.opstart = None
        if not self.free:
            self._point(EXITED, OTHER)
        self._check_consumed()

    # -- machinery ---------------------------------------------------------
    def _on_access(self, kind: int, tag: int, off: int) -> None:
        """The countdown ran out: a scheduling point just before this access."""
        if not self.free:
            self._point(RUNNABLE, ACCESS)

    def _arm(self, now: int) -> None:
        """The countdown to the next access point: the strategy's or the replay's, whichever is first
        (`now`: this process's access count).  A run with no access point drawn pays nothing here."""
        n = (
            0
            if self.free or not self.strategy.preempts_accesses
            else self.strategy.countdown(self.st, self.cpu_id, self.mem.load64(self.st.accesses_off))
        )
        todo = self.anchors.get(self.op) if not self.free else None
        if todo:
            done = now - self.base
            while todo and todo[0] <= done:
                todo.pop(0)
            if todo and (not n or todo[0] - done < n):
                n = todo[0] - done
        if n or self.armed:
            set_countdown(n)
            self.armed = bool(n)

    def _watch(self, mem: Memory, off: int, seen: int, bits: int, timed: bool) -> None:
        st, m, cpu_id = self.st, self.mem, self.cpu_id
        seg = self._seg_index.get(id(mem))
        if seg is None:
            machine = self.cpu.machine
            seg = next(i for i, (a, b) in enumerate(zip(machine.mems, machine.raws)) if mem is a or mem is b)
            self._seg_index[id(mem)] = seg
        m.store32(st.wseg_off[cpu_id], seg)
        m.store32(st.wbits_off[cpu_id], bits)
        m.store64(st.woff_off[cpu_id], off)
        m.store64(st.wval_off[cpu_id], seen)
        m.store32(st.timed_off[cpu_id], int(timed))

    def _changed(self, i: int) -> bool:
        st, m = self.st, self.mem
        mem = self.cpu.machine.raws[m.load32(st.wseg_off[i])]
        off = m.load64(st.woff_off[i])
        load = mem.load64 if m.load32(st.wbits_off[i]) == 64 else mem.load32
        return load(off) != m.load64(st.wval_off[i])

    def _point(self, state: int, why: str, next_op: bool = False) -> bool:
        """A scheduling decision; True if another participant ran before this one continues."""
        st, m, cpu_id, cpu = self.st, self.mem, self.cpu_id, self.cpu
        # the access count: for an access point's anchor, an operation's base, and the whole run's count
        # (what pct and random draw over, and a profile reads); nothing is anchored at an access otherwise
        arms = self.arms
        need = arms and (why is ACCESS or next_op or self.counts) or state == EXITED
        now = accesses() if need else 0
        op = self.op
        if why is BOUNDARY:
            point = AT_BOUNDARY
        elif why is ACCESS:
            point = now - self.base
        else:
            self.npoints += 1
            point = -1 - self.npoints
        if need and (self.counts or state == EXITED):
            m.fetch_add64(st.accesses_off, now - self.synced)
            self.synced = now
        m.store32(st.state_off[cpu_id], state)
        strong: list[int] = []
        weak: list[int] = []
        timed: list[int] = []
        blocked = False
        live_workers = False
        for i, off in enumerate(st.state_off):
            s = m.load32(off)
            if s == RUNNABLE:
                strong.append(i)
            elif s == BLOCKED:
                if self._changed(i):
                    strong.append(i)
                else:
                    blocked = True
                    if m.load32(st.timed_off[i]):
                        timed.append(i)
            elif s == YIELDED:
                weak.append(i)
            if s != EXITED and i in self.worker_slots:
                live_workers = True
        if not live_workers:
            st.dissolve()
            self._go_free()
            set_countdown(0)
            self.armed = False
            return False
        if strong:
            cands = strong
            if why != ACCESS and m.load32(st.weak_run_off):
                m.store32(st.weak_run_off, 0)  # an access point is no sign of progress: a spin loop reads too
        elif weak:
            cands = weak
            if m.fetch_add32(st.weak_run_off, 1) > LIVELOCK_DECISIONS:
                self._wedge(
                    SCHED_LIVELOCK, f"livelock: for {LIVELOCK_DECISIONS:,} decisions only spinning CPUs could run"
                )
                return False
        elif timed:
            cands = timed
        else:
            assert blocked
            self._wedge(SCHED_ALL_BLOCKED, "every CPU is blocked")
            return False
        if cpu_id in cands:
            default = cpu_id
        else:
            default = next((c for c in cands if c > cpu_id), cands[0])
        step = m.load64(st.step_off)
        choice = self.strategy.choose(st, cpu_id, cands, default, step, why)
        table = self.access_table if why is ACCESS else self.point_table
        if table:
            target = table.get((op, point))
            if target is not None:
                self.used.add((op, point))
                if target in cands:
                    choice = target
                else:
                    if self.replay is not None and self.replay.strict:
                        self._diverge(st.points(), op, point, target)
                    choice = next((c for c in cands if c > target), cands[0])
        if choice != default:
            self._record(op, point, choice)
        m.store64(st.step_off, step + 1)
        if why is ACCESS and choice == default:
            m.fetch_add64(st.quiet_off, 1)
        if next_op:
            self.op += 1
            self.base = now
            self.npoints = 0
            if self.opstart is not None and self.op < MAX_PROFILE_OPS:
                self.opstart[self.op] = recorded()
        if choice == cpu_id:
            m.store32(st.state_off[cpu_id], RUNNABLE)
            if self.arms and (next_op or why is ACCESS):
                self._resume(next_op, now)
            return False
        m.fetch_add64(st.switches_off, 1)
        if why is WINDOW:
            cpu.trace(_EV_WINDOW, cpu.window_slot(self.window_name))
        cpu.trace(_EV_SWITCH, switch_arg(step, choice, choice != default, state))
        m.store32(st.token_off, choice)
        m.fetch_add32(st.turn_off[choice], 1)
        if m.load32(st.sleeping_off[choice]):
            m.futex_wake(st.turn_off[choice], 1)
        if state == EXITED:
            return True
        self._wait_turn()
        if not self.free:
            m.store32(st.state_off[cpu_id], RUNNABLE)
        if self.arms:
            self._resume(next_op, now if need else accesses())
        return True

    def _resume(self, next_op: bool, now: int) -> None:
        if next_op and self.opstart is not None and self.op < MAX_PROFILE_OPS:
            self.opclock[self.op] = self.mem.load64(self.st.accesses_off)
        self._arm(now)

    def _wait_turn(self) -> None:
        """Until the token names this CPU.  First spin on it briefly when the CPUs that can run
        fit the cores and one is free for a spinner (the kernel's optimistic spinning: a handoff
        to a spinning CPU is a store, not a futex wake and a wakeup); then sleep on the turn word,
        saying so, so that the CPU that hands the token over wakes only a sleeper."""
        st, m, cpu_id = self.st, self.mem, self.cpu_id
        token, mode = st.token_off, st.mode_off
        runnable = sum(m.load32(off) in (RUNNABLE, YIELDED) for off in st.state_off)
        if runnable > self.spin_slots + 1:
            pass  # more CPUs could take the token than there are cores: a spinner would steal one
        elif m.fetch_add32(st.spinners_off, 1) < self.spin_slots:
            try:
                for _ in range(SPIN_TURN_LOOPS):
                    if m.load32(token) == cpu_id or m.load32(mode) != CONTROLLED:
                        break
                    cpu_relax()
            finally:
                m.fetch_sub32(st.spinners_off, 1)
        else:
            m.fetch_sub32(st.spinners_off, 1)
        turn, sleeping = st.turn_off[cpu_id], st.sleeping_off[cpu_id]
        while True:
            m.store32(sleeping, 1)
            seq = m.load32(turn)
            if m.load32(mode) != CONTROLLED:
                m.store32(sleeping, 0)
                self._go_free()
                return
            if m.load32(token) == cpu_id:
                m.store32(sleeping, 0)
                return
            m.futex_wait(turn, seq, TURN_TIMEOUT_S)

    def _go_free(self) -> None:
        """The run is no longer controlled (over, or a participant died): this CPU runs as the OS
        schedules it.  Where its trace stood is recorded: what follows has no single time line."""
        self.free = True
        self.mem.store64(self.st.free_at_off[self.cpu_id], self.cpu.trace_seq + 1)

    def _record(self, op: int, point: int, target: int) -> None:
        st, m, cpu_id = self.st, self.mem, self.cpu_id
        n = self.ndev
        if n >= st.capacity:
            m.store32(st.overflow_off[cpu_id], 1)
            return
        base = st.dev_off[cpu_id] + n * DEVIATION.itemsize
        m.store32(base, op)
        m.store32(base + 4, point)
        m.store32(base + 8, target)
        self.ndev = n + 1
        m.store32(st.ndev_off[cpu_id], n + 1)

    def _diverge(self, step: int, op: int, point: int, target: int, unreached: bool = False) -> None:
        st, m = self.st, self.mem
        lay = st.seg.layout
        if m.cmpxchg32(st.diverged_off, 0, 1) == 0:
            m.store64(lay.offset("control", 0, "div_step"), step)
            for f, v in (
                ("div_slot", self.cpu_id),
                ("div_op", op),
                ("div_point", point),
                ("div_target", target),
                ("div_unreached", int(unreached)),
            ):
                m.store32(lay.offset("control", 0, f), v)
            self.cpu.machine.request_stop()

    def _check_consumed(self) -> None:
        """A strict replay whose CPU leaves with preemptions it never reached has diverged."""
        if not self.table or self.replay is None or not self.replay.strict or len(self.used) >= len(self.table):
            return
        op, point = min(set(self.table) - self.used)
        self._diverge(self.st.points(), op, point, self.table[(op, point)], unreached=True)

    def _wedge(self, check: Check, why: str) -> None:
        """Nothing can run: report it once, then wait to be killed (or set free).

        Every CPU blocked with a cycle in the wait-for graph (CPUs waiting for
        locks held by each other) is a lock deadlock; without one, something
        nobody will do is awaited (a lost wakeup, memory nobody frees)."""
        st, m, cpu = self.st, self.mem, self.cpu
        if m.cmpxchg32(st.wedged_off, 0, 1) == 0:
            from stress.watchdog import Watchdog

            w = cpu.ctx
            names = [o.name for o in w.scenario.operations(w.policy)] if w is not None else []
            wd = Watchdog(cpu.machine, 0, names)
            if check is SCHED_ALL_BLOCKED and wd.find_cycle():
                check, why = LOCK_DEADLOCK_CYCLE, "deadlock: every CPU is blocked, waiting in a cycle"
            waits = []
            for i in range(st.nparts):
                state = m.load32(st.state_off[i])
                who = "the grace-period kthread" if i == st.nparts - 1 else f"cpu {i}"
                if state == EXITED:
                    continue
                wait = int(cpu.machine.cpus["waiting_on"][i])
                what = (
                    wd.describe_wait(wait)
                    if wait
                    else ("nothing (idle)" if i == st.nparts - 1 else "a word it did not name")
                )
                owners = wd.owners_of(wait) if wait else []
                held = f" held by cpu {','.join(map(str, owners))}" if owners else ""
                waits.append(f"{who} waits for {what}{held}")
            cpu.report(
                check,
                f"{why}: " + "; ".join(waits),
                cpus=[wd.cpu_state(i) for i in range(st.nparts - 1)],
                locks_held=wd.held_locks(),
            )
            cpu.machine.request_stop()
        turn = st.turn_off[self.cpu_id]
        while m.load32(st.mode_off) == CONTROLLED:
            m.futex_wait(turn, m.load32(turn), TURN_TIMEOUT_S)
        self._go_free()
