"""The processes of a run: worker CPUs and the grace-period kthread.

Nothing is inherited but the spec (segment names, scenario, policy, seed,
knobs), so fork, spawn and forkserver behave the same.  A CPU ignores SIGINT
(the runner decides when the run ends), leaves at an operation boundary when
the stop flag is set, and leaves if the runner is gone.  An exception in
policy code becomes a cpu-crash finding carrying the CPU's trace.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from policies import World, get_scenario, load_module
from shm import Cpu, Machine, Segment
from shm.checks import CPU_CRASH
from shm.cpu import not_a_site
from shm.machine import CPU_STATUS, NSTATS
from stress.program import Program, generate, mixes
from stress.schedulers import Replay, make_scheduler

STAT_OPS = 1
STAT_COUNTERS = 32
FLUSH_EVERY = 64
STATUS = {name: i for i, name in enumerate(CPU_STATUS)}


@dataclass
class ProcessSpec:
    machine: str
    state: str
    scenario: str
    policy: str
    seed: int
    ops: int = 0
    scheduler: str = "free"
    knobs: dict = field(default_factory=dict)
    policy_modules: list[str] = field(default_factory=list)
    parent: int = 0
    sched_segment: str | None = None
    program: Program | None = None
    replay: Replay | None = None

    def scheduler_for(self, machine: Machine, cpu_id: int):
        return make_scheduler(
            self.scheduler,
            self.seed,
            self.knobs,
            cpu_seed(self.seed, cpu_id),
            self.sched_segment,
            machine.ncpus + 1,
            self.replay,
        )


def cpu_seed(seed: int, cpu: int) -> int:
    return (seed * 1_000_003 + cpu * 7919 + 1) & 0xFFFFFFFFFFFF


def die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG: the kernel kills this process when the runner dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:
        raise SystemExit(0)


def open_world(spec: ProcessSpec, cpu_id: int, controlled: bool = False) -> World:
    """Attach the run's segments in this process and build its World for cpu_id."""
    not_a_site(os.path.dirname(os.path.abspath(__file__)))  # a finding's site is the software's, not the loop's
    for m in spec.policy_modules:
        load_module(m)
    scenario = get_scenario(spec.scenario)
    policy = scenario.policy(spec.policy)
    machine = Machine.attach(spec.machine)
    state = Segment.attach(spec.state, scenario.layout(machine.ncpus))
    machine.add_segment(state)
    sched = spec.scheduler_for(machine, cpu_id) if controlled or cpu_id < machine.ncpus else None
    cpu = Cpu(machine, cpu_id, sched, seed=cpu_seed(spec.seed, cpu_id))
    w = World(machine, cpu, scenario, policy, state, machine.ncpus)
    scenario.attach(w)
    return w


def _set_status(machine: Machine, cpu_id: int, status: str) -> None:
    machine.raw.store32(machine.cpu_off(cpu_id, "status"), STATUS[status])


def _crash(w: World | None, what: str, exc: BaseException) -> None:
    """The exception becomes a finding; a crashed CPU then leaves the schedule like any other."""
    if w is None:
        return
    tb = "".join(traceback.format_exception(exc))
    w.cpu.report(CPU_CRASH, f"{what}: {type(exc).__name__}: {exc}"[:250], traceback=tb[-600:])
    _set_status(w.machine, w.cpu.id, "crashed")
    try:
        w.cpu.sched.exit(w.cpu)
    except Exception:  # noqa: BLE001 - the scheduler's state may be what broke
        pass


def _flush(stats, done: int, opcounts: list[int], counts: list[int]) -> None:
    stats[0] = done
    stats[STAT_OPS : STAT_OPS + len(opcounts)] = opcounts
    stats[STAT_COUNTERS : STAT_COUNTERS + len(counts)] = counts


def _process(spec: ProcessSpec, cpu_id: int, what: str, controlled: bool, run: Callable[[World], None]) -> None:
    """What every process of a run does around its work: signals, attach, status, the
    scheduler's begin and exit, and any exception turned into a cpu-crash finding."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    gc.freeze()  # what fork inherited (modules, the harness): the child's collections neither walk it nor dirty it
    die_with_parent(spec.parent)
    w = None
    try:
        w = open_world(spec, cpu_id, controlled)
        machine, mem = w.machine, w.machine.raw
        mem.store32(machine.cpu_off(cpu_id, "pid"), os.getpid())
        _set_status(machine, cpu_id, "running")
        run(w)
        stats = machine.cpus["stats"][cpu_id]  # what its callbacks counted (a worker's loop flushes its own)
        stats[STAT_COUNTERS : STAT_COUNTERS + len(w.counts)] = w.counts
        w.cpu.sched.exit(w.cpu)
        _set_status(machine, cpu_id, "done")
        mem.futex_wake(machine.stop_off, -1)  # the runner watches this word: it sees the end at once
    except BaseException as e:  # noqa: BLE001 - every exception is a finding
        _crash(w, f"{what} crashed", e)
        raise SystemExit(1) from None


def cpu_main(spec: ProcessSpec, cpu_id: int) -> None:
    """Entry point of a worker CPU process."""

    def run(w: World) -> None:
        machine, mem = w.machine, w.machine.mem
        ops = w.scenario.operations(w.policy)
        if len(ops) > STAT_COUNTERS - STAT_OPS or len(w.counts) > NSTATS - STAT_COUNTERS:
            raise ValueError("too many operations or counters for the stat area")
        mem.fetch_add32(machine.ready_off, 1)
        mem.futex_wake(machine.ready_off, -1)
        while not mem.load32(machine.go_off) and not mem.load32(machine.stop_off):
            mem.futex_wait(machine.go_off, 0, 0.2)
        w.cpu.sched.begin(w.cpu)
        _run(w, ops, spec)

    _process(spec, cpu_id, f"cpu {cpu_id}", False, run)


def _run(w: World, ops, spec: ProcessSpec) -> None:
    cpu, machine = w.cpu, w.machine
    mem, stop_off = machine.raw, machine.stop_off
    if spec.program is not None:
        steps = iter(spec.program[cpu.id])
        budget = len(spec.program[cpu.id])
    else:
        steps = generate(ops, spec.seed, cpu.id, mixes(ops, spec.seed, machine.ncpus, spec.knobs["programs"])[cpu.id])
        budget = spec.ops
    runs = [op.run for op in ops]
    opcounts = [0] * len(ops)
    stats = machine.cpus["stats"][cpu.id]
    boundary = cpu.sched.op_boundary
    done = 0
    t0 = time.perf_counter_ns()
    while True:
        if not done & (FLUSH_EVERY - 1):
            _flush(stats, done, opcounts, w.counts)
        if mem.load32(stop_off) or (budget and done >= budget):
            break
        k, args = next(steps)
        cpu.steps = done
        cpu.op_begin(k)
        runs[k](w, *args)
        done += 1
        cpu.op_end(done)
        opcounts[k] += 1
        boundary(cpu)
    _flush(stats, done, opcounts, w.counts)
    mem.store64(machine.cpu_off(cpu.id, "run_ns"), time.perf_counter_ns() - t0)


def gp_main(spec: ProcessSpec, cpu_id: int) -> None:
    """Entry point of the grace-period kthread process (a scheduled CPU under control)."""

    def run(w: World) -> None:
        w.cpu.sched.begin(w.cpu)
        w.machine.rcu.kthread(w.cpu, parent=spec.parent)

    _process(spec, cpu_id, "grace-period kthread", spec.sched_segment is not None, run)
