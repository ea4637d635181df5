"""The runner: one scenario, one policy, N CPU processes, and every exit path clean.

It creates the segments, sets the scenario up on the boot CPU, starts the
grace-period kthread and the CPUs (an explicit multiprocess context; fork by
default), opens the start barrier, and then watches: findings, dead workers,
the watchdog, the clock, the operation budget, SIGINT and SIGTERM.  When the
run ends the CPUs leave at an operation boundary; if they all did, the
scenario's quiescent sweep, its teardown, rcu_barrier and the leak sweep
run.  Whatever happened, the children are reaped, the segments unlinked and
the JSON report written.

A verdict is never better than what happened: a harness error, a teardown
that did not finish or a sweep that was skipped without a finding to
explain it ends in exit 3, with one line saying what.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import multiprocess
import numpy as np

from policies import Policy, Scenario, World, env_modules, get_scenario, load_module, module_spec, scenario_module
from shm import MAX_CPUS, Cpu, Machine, Segment, new_run_id
from shm.checks import CPU_CRASH, POOL_LEAK, WATCHDOG_STALL
from shm.events import KINDS
from stress.knobs import KnobError, echo, resolve_all
from stress.program import ProgramError, from_json, generate_program
from stress.report import (
    EXIT_FINDINGS,
    EXIT_HARNESS,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_USAGE,
    Finding,
    build_report,
    end_line,
    report_head,
    stat_line,
    summary,
    write_json,
)
from stress.schedulers import Replay, SchedState, describe_point, is_controlled, make_strategy
from stress.schedulers.deadline import DeadlineScheduler, TeardownStall
from stress.watchdog import Watchdog
from stress.worker import STAT_COUNTERS, STATUS, ProcessSpec, cpu_main, cpu_seed, gp_main

STOP_GRACE_S = 3.0
START_TIMEOUT_S = 60.0
BARRIER_TIMEOUT_S = 20.0
SETUP_TIMEOUT_S = 20.0
POLL_S = 0.05
CONTROLLED_OPS = 2000
PROFILE_CAP = 1 << 18  # accesses recorded per CPU when profiling
DEFAULT_DURATION_S = 10.0
AFTER_FINDING_DEADLINE_S = 1.0


class UsageError(Exception):
    """Bad input: one line, exit code 2."""


class HarnessError(Exception):
    """The harness itself failed: exit code 3."""


@dataclass
class RunResult:
    report: dict
    findings: list[Finding]
    exit_code: int
    report_path: str | None = None
    profile: list | None = field(default=None, repr=False)  # per CPU, per operation, its accesses

    @property
    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    @property
    def checks(self) -> set[str]:
        return {f.check for f in self.findings}

    @property
    def first_check(self) -> str | None:
        return self.findings[0].check if self.findings else None

    @property
    def clean(self) -> bool:
        return not self.findings and self.exit_code == EXIT_OK


def check_json_path(path: str | None) -> None:
    if path is None:
        return
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise UsageError(f"cannot write the JSON report {path!r}: directory {d!r} does not exist")
    if not os.access(d, os.W_OK):
        raise UsageError(f"cannot write the JSON report {path!r}: directory {d!r} is not writable")
    if os.path.isdir(path):
        raise UsageError(f"cannot write the JSON report {path!r}: it is a directory")


def load_policy_modules(given=()) -> list[str]:
    """Load the modules given, then MMTORTURE_POLICY_MODULE's; the list as a report records it.
    A module that cannot be loaded is bad input (UsageError), whatever it raised."""
    out: list[str] = []
    for m in [*given, *env_modules()]:
        spec = module_spec(m)
        if spec in out:
            continue
        try:
            load_module(spec)
        except LookupError as e:
            raise UsageError(str(e).strip("'\"")) from None
        except Exception as e:  # noqa: BLE001 - a user's module that fails to import
            raise UsageError(f"cannot load policies from {m}: {type(e).__name__}: {e}") from None
        out.append(spec)
    return out


def resolve(scenario: str, policy: str | None, policy_modules=()) -> tuple[Scenario, Policy]:
    load_policy_modules(policy_modules)
    try:
        sc = get_scenario(scenario)
        return sc, sc.policy(policy)
    except LookupError as e:
        raise UsageError(str(e).strip("'\"")) from None


class Runner:
    def __init__(
        self,
        scenario: str,
        policy: str | None = None,
        knobs: dict[str, Any] | None = None,
        json_path: str | None = None,
        out: TextIO | None = None,
        policy_modules: tuple[str, ...] | list[str] = (),
        quiet: bool = False,
        program: list | None = None,
        schedule: dict | None = None,
        strict: bool = True,
        save_failing: str | None = None,
        verdict: bool = True,
        profile: bool = False,
    ):
        """`program` (JSON form, per CPU [name, arg, ...]) replaces the generator;
        `schedule` (a report's "schedule") is followed instead of a strategy,
        strictly (a misfit is a divergence, exit 2) or leniently (shrinking).
        `save_failing`: a directory where a failing run without `json_path`
        writes its report (the CLI: the working directory).  `verdict`: end
        with the `End of test` line (a suite prints one for all its runs).
        `profile`: a controlled run records every shared access of each CPU,
        per operation (RunResult.profile), for communication-directed search."""
        self.profile = profile
        self.profiled: list | None = None
        self.policy_modules = load_policy_modules(policy_modules)
        self.scenario, self.policy = resolve(scenario, policy)
        own = scenario_module(self.scenario.name)
        if own is not None and own not in self.policy_modules:
            self.policy_modules.append(own)  # registered by an import the report must name
        try:
            self.knobs = resolve_all(knobs or {})
        except KnobError as e:
            raise UsageError(str(e)) from None
        if self.knobs["cpus"] > MAX_CPUS - 2:
            raise UsageError(f"--cpus must be at most {MAX_CPUS - 2}, not {self.knobs['cpus']}")
        if self.knobs["seed"] is None:
            self.knobs["seed"] = time.time_ns() % 1_000_000_007
        if self.knobs["nowait_fail_rate"] is None:
            self.knobs["nowait_fail_rate"] = self.scenario.needs.nowait_fail_rate
        self.seed = self.knobs["seed"]
        check_json_path(json_path)
        self.json_path = json_path
        self.save_failing = save_failing
        self.show_verdict = verdict
        self.out = out if out is not None else sys.stdout
        self.quiet = quiet
        self.label = f"{self.scenario.name}/{self.policy.name}"
        self.machine: Machine | None = None
        self.world: World | None = None  # the boot CPU's: setup, sweep, teardown
        self.gauge_samples: list[tuple[float, dict[str, int]]] = []  # (seconds into the run, gauges)
        self.gauges_quiescent: dict[str, int] | None = None
        self.procs: list = []
        self.gp: Any = None
        self.signum = 0
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.stop_reason = ""
        self.elapsed = 0.0
        self.run_id = ""
        self.ops = self.scenario.operations(self.policy)
        self.op_names: list[str] = [op.name for op in self.ops]
        self.crash_reported: set[int] = set()
        self.sched: SchedState | None = None
        self.strategy: Any = None
        self.divergence: dict | None = None
        if schedule is not None:
            self.knobs["scheduler"] = "replay"
        self.sched_name = self.knobs["scheduler"]
        self.controlled = is_controlled(self.sched_name)
        ncpus = self.knobs["cpus"]
        try:
            self.program = None if program is None else from_json(program, self.ops, ncpus)
            self.replay = None if schedule is None else Replay.from_schedule(schedule, ncpus + 1, strict)
        except (ProgramError, ValueError, TypeError) as e:
            raise UsageError(str(e)) from None
        if self.controlled and self.program is None:
            self.knobs["ops"] = self.knobs["ops"] or CONTROLLED_OPS
            self.program = generate_program(self.ops, self.seed, ncpus, self.knobs["ops"], self.knobs["programs"])
        if self.program is not None:
            self.knobs["ops"] = max(len(p) for p in self.program)
        if self.knobs["duration"] is None and not self.knobs["ops"]:
            self.knobs["duration"] = DEFAULT_DURATION_S

    @property
    def m(self) -> Machine:
        """The machine, once the run made it."""
        assert self.machine is not None
        return self.machine

    # -- output ----------------------------------------------------------
    def say(self, line: str) -> None:
        if self.quiet:
            return
        bar = getattr(self, "bar", None)
        if bar is not None:
            bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    # -- signals ---------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signum = self.signum or signum
        if self.machine is not None:
            self.machine.request_stop()

    # -- the run ---------------------------------------------------------
    def run(self) -> RunResult:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        report: dict = {}
        findings: list[Finding] = []
        try:
            try:
                self._run()
            except Exception as e:  # noqa: BLE001 - the harness failed: say so, exit 3
                self.errors.append(f"{type(e).__name__}: {e}")
            finally:
                self._reap()
            findings, report = self._report()
            if self.profile and self.sched is not None:
                self.profiled = self.sched.profile()
        finally:
            self._cleanup()
            for s, h in old.items():
                signal.signal(s, h)
        code = self._exit_code(findings)
        if self.signum:  # it may have come while the run was cleaning up, after the report was built
            report.update(interrupted=True, signal=self.signum)
        path = self.json_path
        if path is None and self.save_failing is not None and code != EXIT_OK and self.run_id:
            path = os.path.join(self.save_failing, f"mmtorture-report-{self.run_id}.json")
        if path:
            report["report_path"] = os.path.abspath(path)
            write_json(path, report)
        if not self.quiet:
            self.say(summary(report, path if path != self.json_path else None))
            if self.show_verdict:
                self.say(end_line(code, report))
        return RunResult(report, findings, code, path, self.profiled)

    def _exit_code(self, findings: list[Finding]) -> int:
        if self.signum:
            return EXIT_SIGNAL.get(self.signum, 128 + self.signum)
        if self.divergence:
            return EXIT_USAGE
        if self.errors:
            return EXIT_HARNESS
        return EXIT_FINDINGS if findings else EXIT_OK

    def _run(self) -> None:
        k, sc, pol = self.knobs, self.scenario, self.policy
        ncpus = k["cpus"]
        run_id = new_run_id()
        self.run_id = run_id
        needs = sc.needs
        m = self.machine = Machine.create(
            run_id,
            ncpus,
            needs.pool_pages,
            needs.page_size,
            needs.srcu_domains,
            k["keep_going"],
            self.seed,
            k["nowait_fail_rate"],
        )
        m.set_run_info(
            {"scenario": sc.name, "policy": pol.name, "policy_modules": self.policy_modules, "pid": os.getpid()}
        )
        state = Segment.create(sc.layout(ncpus), run_id, 1)
        m.add_segment(state)
        self.boot_sched = DeadlineScheduler()
        self.boot = Cpu(m, m.boot_cpu, self.boot_sched, seed=cpu_seed(self.seed, m.boot_cpu))
        self.world = World(m, self.boot, sc, pol, state, ncpus)
        sc.attach(self.world)
        self.boot_sched.deadline = time.monotonic() + SETUP_TIMEOUT_S
        try:
            sc.setup(self.world)
        except TeardownStall:
            raise HarnessError(f"{sc.name} setup waited more than {SETUP_TIMEOUT_S:g}s (for memory?)") from None
        finally:
            self.boot_sched.deadline = None
        if m.finding_count():
            raise HarnessError(f"{sc.name} setup reported a finding: {m.findings()[0]['message']}")
        spec = ProcessSpec(
            m.seg.name,
            state.name,
            sc.name,
            pol.name,
            self.seed,
            k["ops"],
            self.sched_name,
            dict(k),
            self.policy_modules,
            os.getpid(),
            program=self.program,
            replay=self.replay,
        )
        if self.controlled:
            sched = self.sched = SchedState.create(run_id, 2, ncpus + 1, PROFILE_CAP if self.profile else 0)
            self.strategy = make_strategy(self.sched_name, self.seed, ncpus + 1, k, self.replay)
            self.strategy.init(sched)
            spec.sched_segment = sched.seg.name
        self.say(
            f"{self.label} {echo(k)}"
            + (" MUTANT" if pol.mutant else "")
            + (f" (replaying a schedule, {'strict' if self.replay.strict else 'lenient'})" if self.replay else "")
            + f"; machine segment {m.seg.name} (mmtorture inspect)"
        )
        ctx = multiprocess.get_context(k["start_method"])
        self.gp = ctx.Process(target=gp_main, args=(spec, m.gp_cpu), name="mmtorture-gp", daemon=True)
        self.gp.start()
        for i in range(ncpus):
            p = ctx.Process(target=cpu_main, args=(spec, i), name=f"mmtorture-cpu{i}", daemon=True)
            p.start()
            self.procs.append(p)
        self._wait_ready(ncpus)
        if self.sched is not None:
            self.sched.start(self.strategy.first(self.sched))
        m.mem.store32(m.go_off, 1)
        m.mem.futex_wake(m.go_off, -1)
        self._watch()
        self._stop_cpus()
        self._quiescent()

    def _wait_ready(self, ncpus: int) -> None:
        m = self.m
        t0 = time.monotonic()
        while (ready := m.mem.load32(m.ready_off)) < ncpus:
            if self.signum or m.stop_requested():
                return
            if any(p.exitcode is not None for p in self.procs) or self.gp.exitcode is not None:
                self._check_dead()
                return
            if time.monotonic() - t0 > START_TIMEOUT_S:
                raise HarnessError(f"only {ready} of {ncpus} CPUs started within {START_TIMEOUT_S:g}s")
            m.mem.futex_wait(m.ready_off, ready, POLL_S)

    def _ops_done(self) -> tuple[int, list[int]]:
        """Exact, even for a CPU killed mid-run: op_end stores the count in the heartbeat."""
        beats = self.m.cpus["heartbeat"][: self.knobs["cpus"]]
        return int(beats.sum()), [int(x) for x in beats]

    def _counters(self) -> dict[str, int]:
        """Every participant's counts: the CPUs', the grace-period kthread's (what the callbacks
        it ran counted) and this process's (the setup, the callbacks rcu_barrier ran, the
        sweep and the teardown)."""
        n = len(self.scenario.counters)
        sums = self.m.cpus["stats"][:, STAT_COUNTERS : STAT_COUNTERS + n].sum(axis=0)
        if self.world is not None:
            sums = sums + np.asarray(self.world.counts[:n], dtype=np.int64)
        return {name: int(sums[i]) for i, name in enumerate(self.scenario.counters)}

    def _stat(self) -> str:
        m = self.m
        ops, _ = self._ops_done()
        extra = {"rcu_gp": m.rcu.gp_seq(), "free": f"{m.pool.nr_free()}/{m.pool.npages}"}
        return stat_line(
            self.label,
            time.monotonic() - self.t_start,
            self.knobs["cpus"],
            ops,
            m.kind_counts(),
            extra,
            self.scenario.stat_text(self._counters()),
        )

    def _make_bar(self):
        want = self.knobs["progress"]
        if self.quiet or want == "off":
            return None
        if want == "auto" and (not sys.stderr.isatty() or os.environ.get("CI")):
            return None
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: the runner never forks with threads
        budget = self.knobs["ops"] * self.knobs["cpus"]
        if budget:
            return tqdm(total=budget, desc=self.label, unit="op", file=sys.stderr, leave=False)
        return tqdm(
            total=round(self.knobs["duration"]),
            desc=self.label,
            file=sys.stderr,
            leave=False,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s",
        )

    def _watch(self) -> None:
        m, k = self.m, self.knobs
        self.t_start = start = time.monotonic()
        progress = None
        if self.sched is not None:
            st = self.sched
            progress = lambda: (st.mem.load64(st.step_off), st.mem.load32(st.token_off))  # noqa: E731
        watchdog = self.watchdog = Watchdog(m, k["stall_timeout"], self.op_names, progress)
        self.bar = self._make_bar()
        next_stat = start + k["stat_interval"]
        every = k["gauge_interval"]
        next_gauge = start if every else float("inf")
        if every and self.world is not None:  # the first as the CPUs start, however short the run
            self.gauge_samples.append((0.0, self.scenario.gauges(self.world)))
            next_gauge += every
        duration = k["duration"]
        try:
            while True:
                now = time.monotonic()
                if self.signum:
                    self.stop_reason = "interrupted"
                    break
                if m.stop_requested():
                    self.stop_reason = "finding" if m.finding_count() else "stop requested"
                    break
                if self._check_dead():
                    continue
                statuses = m.cpus["status"][: k["cpus"]]
                if all(p.exitcode is not None for p in self.procs) or (statuses == STATUS["done"]).all():
                    self.stop_reason = "operation budget"
                    break
                if duration is not None and now - start >= duration:
                    self.stop_reason = "duration"
                    break
                watchdog.check(now)
                if now >= next_stat:
                    self.say(self._stat())
                    next_stat += k["stat_interval"]
                if now >= next_gauge and self.world is not None:
                    self.gauge_samples.append((round(now - start, 4), self.scenario.gauges(self.world)))
                    next_gauge += every
                if self.bar is not None:
                    done = self._ops_done()[0] if k["ops"] else int(now - start)
                    self.bar.update(done - self.bar.n)
                m.mem.futex_wait(m.stop_off, 0, POLL_S)
        finally:
            self.elapsed = time.monotonic() - start
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    def _check_dead(self) -> bool:
        """A worker that died without saying why is a cpu-crash finding.  True if one was found."""
        m = self.m
        found = False
        for i, p in enumerate([*self.procs, self.gp]):
            cpu = i if i < len(self.procs) else m.gp_cpu
            if p is None or p.exitcode is None or cpu in self.crash_reported:
                continue
            status = int(m.cpus["status"][cpu])
            if status == STATUS["done"] and p.exitcode == 0:
                continue
            self.crash_reported.add(cpu)
            if status == STATUS["crashed"]:
                continue
            how = f"killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exit code {p.exitcode}"
            op = int(m.cpus["op"][cpu])
            name = "grace-period kthread" if cpu == m.gp_cpu else f"cpu {cpu}"
            opname = self.op_names[op] if 0 <= op < len(self.op_names) else None
            m.record_finding(
                CPU_CRASH,
                cpu,
                op,
                int(m.cpus["heartbeat"][cpu]),
                f"{name} (pid {p.pid}) died: {how}" + (f" in {opname}" if opname else ""),
                {
                    "pid": p.pid,
                    "exitcode": p.exitcode,
                    "locks_held": self.watchdog.held_locks() if hasattr(self, "watchdog") else {},
                },
                m.traces[cpu].copy(),
            )
            found = True
        return found

    def _stop_cpus(self) -> None:
        m = self.m
        m.request_stop()
        wedged = self.sched is not None and self.sched.summary()["wedged"]
        grace = 0.0 if wedged else 0.5 if m.finding_count() else STOP_GRACE_S
        deadline = time.monotonic() + grace
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        if self.sched is not None and not wedged and any(p.is_alive() for p in self.procs):
            self.sched.dissolve()  # a participant died holding the token: let the others leave
            self.notes.append("the controlled schedule was dissolved to stop the CPUs")
            deadline = time.monotonic() + 0.5
            for p in self.procs:
                p.join(max(0.0, deadline - time.monotonic()))
        stuck = [i for i, p in enumerate(self.procs) if p.is_alive()]
        if stuck and not m.finding_count() and not self.signum and not wedged:
            self.watchdog.fire(
                WATCHDOG_STALL,
                stuck[0],
                f"cpu {', '.join(map(str, stuck))} did not stop within {grace:g}s of the stop request",
                stuck,
            )
        for i in stuck:
            self.procs[i].kill()
            self.procs[i].join(5)
            self.crash_reported.add(i)
        self._check_dead()

    def _skip_sweeps(self, why: str) -> None:
        """The sweeps cannot run: a note when a finding explains it, else the harness failed."""
        if self.m.finding_count() or self.signum:
            self.notes.append(f"quiescent sweeps skipped: {why}")
        else:
            self.errors.append(f"quiescent sweeps skipped: {why}")

    def _quiescent(self) -> None:
        m = self.m
        statuses = [int(s) for s in m.cpus["status"][: self.knobs["cpus"]]]
        if self.signum:
            return self._skip_sweeps("interrupted")
        if any(s != STATUS["done"] for s in statuses):
            return self._skip_sweeps("not every CPU stopped at an operation boundary")
        if self.gp.exitcode is not None:
            return self._skip_sweeps("the grace-period kthread is gone")
        if self.stop_reason == "finding" and not self.knobs["keep_going"]:
            return self._skip_sweeps("the run stopped at its first finding")
        if self.sched is not None:
            self.sched.dissolve()
        m.control["stop"] = 0  # teardown findings are recorded, not a reason to skip the rest
        after_finding = m.finding_count() > 0
        limit = (
            min(self.knobs["stall_timeout"], AFTER_FINDING_DEADLINE_S) if after_finding else self.knobs["stall_timeout"]
        )
        # The kthread invokes what the run queued and leaves; from here the boot CPU is the only
        # CPU and runs every callback itself (rcu_barrier), so what the sweeps and the teardown
        # find does not depend on how the OS interleaves two processes, and a replay agrees.
        m.rcu.stop_kthread()
        self.gp.join(BARRIER_TIMEOUT_S)
        if self.gp.exitcode is None:
            return self._skip_sweeps(
                f"the grace-period kthread did not finish the run's callbacks within {BARRIER_TIMEOUT_S:g}s"
            )
        self._check_dead()
        self.boot_sched.deadline = time.monotonic() + limit
        self.gauges_quiescent = self.scenario.gauges(self.world)
        phase = "sweep"
        try:
            self.scenario.sweep(self.world)
            phase = "teardown"
            self.scenario.teardown(self.world)
            phase = "rcu_barrier"
            if not m.rcu.barrier(self.boot, timeout=BARRIER_TIMEOUT_S):
                return self._skip_sweeps(
                    f"rcu_barrier did not finish within {BARRIER_TIMEOUT_S:g}s, so the leak sweep did not run"
                )
        except TeardownStall as stall:
            wait = int(m.cpus["waiting_on"][m.boot_cpu])
            what = self.watchdog.describe_wait(wait) if wait else "nothing it published"
            message = (
                f"the {self.scenario.name} {phase} waits for {what}, and no other CPU is left to end the wait"
                if stall.alone
                else f"the {self.scenario.name} {phase} stalled for {limit:g}s waiting for {what}"
            )
            if after_finding:  # the state is already broken; the stall is a consequence, not news
                self.notes.append(f"{message} (after the first finding); leak sweep skipped")
                return
            self.watchdog.fired = False
            self.watchdog.fire(WATCHDOG_STALL, m.boot_cpu, message, [])
            self.notes.append(f"leak sweep skipped: {phase} stalled")
            return
        finally:
            self.boot_sched.deadline = None
        for leak in m.pool.leaks():
            self.boot.report(POOL_LEAK, f"{leak['pages']} page(s) allocated at '{leak['site']}' never freed", **leak)

    def _reap(self) -> None:
        """Every child ends and is joined, whatever happened before."""
        m = self.machine
        if m is not None:
            m.request_stop()
            if self.sched is not None:
                self.sched.dissolve()
            if self.gp is not None and self.gp.exitcode is None:
                m.rcu.stop_kthread()
        for p in [*self.procs, self.gp]:
            if p is None or p.pid is None:
                continue
            p.join(STOP_GRACE_S if p is self.gp else 0.5)
            if p.is_alive():
                p.kill()
                p.join(5)
        if m is not None and self.gp is not None and self.gp.pid is not None:
            self._check_dead()

    def _cleanup(self) -> None:
        if self.sched is not None:
            self.sched.seg.unlink()
            self.sched.close()
        m = self.machine
        if m is not None:
            m.unlink()
            m.close()

    # -- report ----------------------------------------------------------
    def _schedule(self) -> dict:
        st = self.sched
        assert st is not None
        summ = st.summary()
        out = {"strategy": self.sched_name, "seed": self.seed, **self.strategy.describe()}
        out.update({k: summ[k] for k in ("first", "steps", "decisions", "accesses", "switches", "complete")})
        out["deviations"] = st.deviations()
        out["preemptions"] = sum(len(d) for d in out["deviations"])
        div = st.divergence()
        if div is None and self.replay is not None and self.replay.strict and not self.signum:
            want = self.replay.steps
            if want is not None and want != summ["steps"] and not summ["wedged"]:
                div = {
                    "step": min(want, summ["steps"]),
                    "cpu": -1,
                    "op": -1,
                    "point": -1,
                    "target": -1,
                    "message": f"the run made {summ['steps']} scheduling decisions, the schedule recorded {want}",
                }
        if div is not None:
            if "message" not in div:
                who = "the grace-period kthread" if div["cpu"] == self.knobs["cpus"] else f"cpu {div['cpu']}"
                if div.get("unreached"):
                    div["message"] = (
                        f"{who} never reached {describe_point(div['op'], div['point'])}, where "
                        f"the schedule switches to cpu {div['target']}"
                    )
                else:
                    div["message"] = (
                        f"at step {div['step']}, {who} at {describe_point(div['op'], div['point'])} "
                        f"should switch to cpu {div['target']}, which cannot run there"
                    )
            self.divergence = div
        return out

    def _report(self) -> tuple[list[Finding], dict]:
        """The report, whatever happened; a failure while building it is the harness's (exit 3)."""
        report = report_head(self) | {
            "run_id": self.run_id,
            "stop_reason": self.stop_reason,
            "duration_s": round(self.elapsed, 3),
            "interrupted": bool(self.signum),
            "signal": self.signum or None,
            "notes": self.notes,
            "policy_modules": self.policy_modules,
        }
        findings: list[Finding] = []
        try:
            findings, report = build_report(self, report)
        except Exception as e:  # noqa: BLE001 - a report is written whatever happened
            self.errors.append(f"building the report failed: {type(e).__name__}: {e}")
        report["harness_errors"] = self.errors
        report["error"] = "; ".join(self.errors) or None
        return findings, report


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run, which cleaned up and wrote its report: a loop of runs
    (hunt, shrink, reproduce, a benchmark) stops there too, and the CLI exits 130 or 143."""

    def __init__(self, result: RunResult):
        super().__init__(f"interrupted by signal {result.report.get('signal')}")
        self.result = result


def stop_if_interrupted(r: RunResult) -> RunResult:
    """`r`, unless a signal stopped it: then Interrupted, for the loop that made it."""
    if r.report.get("interrupted"):
        raise Interrupted(r)
    return r


def run(
    scenario: str,
    policy: str | None = None,
    *,
    json_path: str | None = None,
    out: TextIO | None = None,
    quiet: bool = True,
    policy_modules=(),
    program: list | None = None,
    schedule: dict | None = None,
    strict: bool = True,
    profile: bool = False,
    **knobs: Any,
) -> RunResult:
    """Run one scenario/policy; knobs as in stress.knobs (cpus=, ops=, seed=, scheduler=...).

    `program` and `schedule` as in Runner: a run that replays (program, schedule)."""
    return Runner(
        scenario, policy, knobs, json_path, out, policy_modules, quiet, program, schedule, strict, profile=profile
    ).run()


__all__ = ["HarnessError", "Interrupted", "KINDS", "RunResult", "Runner", "UsageError", "run", "stop_if_interrupted"]
