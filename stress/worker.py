"""The processes of a run: worker CPUs and the grace-period kthread.

Nothing is inherited but the spec (segment names, scenario, policy, seed,
knobs), so fork, spawn and forkserver behave the same.  A CPU ignores SIGINT
(the runner decides when the run ends), leaves at an operation boundary when
the stop flag is set, and leaves if the runner is gone.  An exception in
policy code becomes a cpu-crash finding carrying the CPU's trace.
"""

from __future__ import annotations

import os
import signal
import traceback
from bisect import bisect
from dataclasses import dataclass, field
from itertools import accumulate

from policies import World, get_scenario, load_module
from shm import Cpu, Machine, Segment
from shm.machine import NSTATS
from stress.schedulers import make_scheduler

STAT_OPS = 1
STAT_COUNTERS = 32
FLUSH_EVERY = 64
STATUS = {"idle": 0, "running": 1, "done": 2, "crashed": 3}


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


def cpu_seed(seed: int, cpu: int) -> int:
    return (seed * 1_000_003 + cpu * 7919 + 1) & 0xFFFFFFFFFFFF


def open_world(spec: ProcessSpec, cpu_id: int, sched=None) -> World:
    """Attach the run's segments in this process and build its World for cpu_id."""
    for m in spec.policy_modules:
        load_module(m)
    scenario = get_scenario(spec.scenario)
    policy = scenario.policy(spec.policy)
    machine = Machine.attach(spec.machine)
    state = Segment.attach(spec.state, scenario.layout(machine.ncpus))
    machine.add_segment(state)
    cpu = Cpu(machine, cpu_id, sched, seed=cpu_seed(spec.seed, cpu_id))
    w = World(machine, cpu, scenario, policy, state, machine.ncpus)
    scenario.attach(w)
    return w


def _set_status(machine: Machine, cpu_id: int, status: str) -> None:
    machine.mem.store32(machine.cpu_off(cpu_id, "status"), STATUS[status])


def _crash(w: World | None, what: str, exc: BaseException) -> None:
    if w is None:
        return
    tb = "".join(traceback.format_exception(exc))
    w.cpu.report("cpu-crash", f"{what}: {type(exc).__name__}: {exc}"[:250], traceback=tb[-600:])
    _set_status(w.machine, w.cpu.id, "crashed")


def _flush(stats, done: int, opcounts: list[int], counts: list[int]) -> None:
    stats[0] = done
    stats[STAT_OPS : STAT_OPS + len(opcounts)] = opcounts
    stats[STAT_COUNTERS : STAT_COUNTERS + len(counts)] = counts


def cpu_main(spec: ProcessSpec, cpu_id: int) -> None:
    """Entry point of a worker CPU process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    w = None
    try:
        sched = make_scheduler(spec.scheduler, cpu_seed(spec.seed, cpu_id), spec.knobs)
        w = open_world(spec, cpu_id, sched)
        machine, mem = w.machine, w.machine.mem
        mem.store32(machine.cpu_off(cpu_id, "pid"), os.getpid())
        _set_status(machine, cpu_id, "running")
        ops = w.scenario.operations(w.policy)
        if len(ops) > STAT_COUNTERS - STAT_OPS or len(w.counts) > NSTATS - STAT_COUNTERS:
            raise ValueError("too many operations or counters for the stat area")
        mem.fetch_add32(machine.ready_off, 1)
        mem.futex_wake(machine.ready_off, -1)
        while not mem.load32(machine.go_off) and not mem.load32(machine.stop_off):
            mem.futex_wait(machine.go_off, 0, 0.2)
            if os.getppid() != spec.parent:
                return
        _run(w, ops, spec)
        _set_status(machine, cpu_id, "done")
    except BaseException as e:  # noqa: BLE001 - every exception is a finding
        _crash(w, f"cpu {cpu_id} crashed", e)
        raise SystemExit(1) from None


def _run(w: World, ops, spec: ProcessSpec) -> None:
    cpu, machine = w.cpu, w.machine
    mem, stop_off = machine.mem, machine.stop_off
    rng = cpu.rng
    cum = list(accumulate(op.weight for op in ops))
    total = cum[-1]
    runs = [op.run for op in ops]
    opcounts = [0] * len(ops)
    stats = machine.cpus["stats"][cpu.id]
    boundary = cpu.sched.op_boundary
    budget = spec.ops
    parent = spec.parent
    done = 0
    while True:
        if not done & (FLUSH_EVERY - 1):
            _flush(stats, done, opcounts, w.counts)
            if os.getppid() != parent:
                break
        if mem.load32(stop_off) or (budget and done >= budget):
            break
        k = bisect(cum, rng.random() * total)
        cpu.steps = done
        cpu.op_begin(k)
        runs[k](w)
        done += 1
        cpu.op_end(done)
        opcounts[k] += 1
        boundary(cpu)
    _flush(stats, done, opcounts, w.counts)


def gp_main(spec: ProcessSpec, cpu_id: int) -> None:
    """Entry point of the grace-period kthread process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    w = None
    try:
        w = open_world(spec, cpu_id)
        w.machine.mem.store32(w.machine.cpu_off(cpu_id, "pid"), os.getpid())
        _set_status(w.machine, cpu_id, "running")
        w.machine.rcu.kthread(w.cpu, parent=spec.parent)
        _set_status(w.machine, cpu_id, "done")
    except BaseException as e:  # noqa: BLE001
        _crash(w, "grace-period kthread crashed", e)
        raise SystemExit(1) from None
