"""mmtorture campaign: a matrix of runs on Ray, findings grouped by signature, one reproducer each.

A campaign is many independent runs (scenario x policy x strategy x seed),
each its own `python -m stress run` process, fanned out through Ray: an
embedded one on this machine by default (every core, nothing to start), a
cluster with --address or RAY_ADDRESS.  Like rcutorture's kvm-remote.sh and
syzkaller's manager, it reduces what the runs found to signatures (the
check, the scenario, the policy, the operation and the innermost functions
that reported it: `Finding.site`), so that a hundred runs that hit one bug
give one line with a count and one reproducer.

Everything is on disk as it happens, in the campaign's directory:
`plan.json` (what to run), `runs.jsonl` (a line per finished run, written
when it finishes), `reports/` (each failing run's report) and
`campaign.json` (the summary, rewritten as signatures come in).  `--resume
DIR` reads them back and runs what is left; Ctrl-C keeps what finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from stress.detection import REPRODUCE_S
from stress.hunt import FREE_RUN_S, cpus_for, ops_for, plan
from stress.report import EXIT_FINDINGS, EXIT_OK, write_json
from stress.schedulers.free import DELAY_EVERY

CAMPAIGN_SCHEMA = "mmtorture-campaign/1"
STRATEGIES = ("mix", "random", "swarm", "pct", "free")
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's object store lives in /dev/shm too; results are small
RUN_TIMEOUT_S = 600.0  # a run's own watchdog ends a hang long before this
SITE_FRAMES = 3
INSTALL_HINT = "Ray is not installed: pip install 'mmtorture[campaign]' (or pip install ray)"


class CampaignError(Exception):
    """Bad input to a campaign (one line, exit 2)."""


@dataclass(frozen=True)
class RunSpec:
    """One run of the matrix: a `python -m stress run` command line."""

    scenario: str
    policy: str
    strategy: str
    seed: int
    n: int  # the seed's index in its cell: what plan() and cpus_for() alternate on
    cpus: int
    ops: int | None = None
    policy_modules: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.scenario}.{self.policy}.{self.strategy}.{self.seed}"

    def args(self, report: str) -> list[str]:
        """The run's arguments after `python -m stress`, as hunt runs the same strategy."""
        name, scheduler, gen = plan(self.strategy, self.n)
        args = ["run", "-s", self.scenario, "-p", self.policy, "--seed", str(self.seed)]
        args += ["--cpus", str(self.run_cpus), "--scheduler", scheduler, "--programs", gen]
        if scheduler == "free":
            args += ["--duration", str(FREE_RUN_S), "--ops", "0", "--delay-every", str(DELAY_EVERY)]
        else:
            args += ["--ops", str(ops_for(name, self.ops))]
        for m in self.policy_modules:
            args += ["--policy-module", m]
        return args + ["--progress", "off", "--quiet", "--json", report]

    @property
    def scheduler(self) -> str:
        return plan(self.strategy, self.n)[1]

    @property
    def run_cpus(self) -> int:
        return cpus_for(plan(self.strategy, self.n)[0], self.n, self.cpus)


@dataclass
class Plan:
    """What a campaign runs: the cells (scenario, policy, strategy), seeds first_seed.., a budget."""

    cells: list[tuple[str, str, str]]
    first_seed: int = 0
    seeds: int | None = None  # per cell; None: as many as the budget allows
    runs: int | None = None
    duration: float | None = None
    cpus: int = 2
    ops: int | None = None
    policy_modules: list[str] = field(default_factory=list)  # scenarios of the user's own, as --policy-module

    def specs(self) -> Iterator[RunSpec]:
        """Cell after cell, seed by seed: a budget that ends early has covered every cell."""
        n = 0
        mods = tuple(self.policy_modules)
        while self.seeds is None or n < self.seeds:
            for sc, pol, strat in self.cells:
                yield RunSpec(sc, pol, strat, self.first_seed + n, n, self.cpus, self.ops, mods)
            n += 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Plan:
        return cls(**{**d, "cells": [tuple(c) for c in d["cells"]]})


def build_plan(
    scenarios: Sequence[str] = (),
    policies: Sequence[str] = (),
    strategies: Sequence[str] = ("mix",),
    *,
    all_correct: bool = False,
    mutants: bool = False,
    **budget,
) -> Plan:
    """The cells of a campaign: `policies` of `scenarios`, every correct policy (`all_correct`), or
    every mutant (`mutants`: a blind hunt at scale), each by every strategy."""
    from policies import get_scenario
    from policies import scenarios as registry
    from stress.runner import UsageError, load_policy_modules

    try:
        load_policy_modules(budget.get("policy_modules") or [])
    except UsageError as e:
        raise CampaignError(str(e)) from None
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise CampaignError(f"unknown strategy {bad[0]!r} (known: {', '.join(STRATEGIES)})")
    try:
        scs = [get_scenario(s) for s in scenarios] if scenarios else list(registry().values())
    except LookupError as e:
        raise CampaignError(str(e.args[0])) from None
    cells = []
    for sc in scs:
        if policies:
            try:
                chosen = [sc.policy(p) for p in policies]
            except LookupError as e:
                raise CampaignError(str(e.args[0])) from None
        elif mutants:
            chosen = sc.mutants()
        elif all_correct or not scenarios:
            chosen = sc.correct_policies()
        else:
            chosen = [sc.policy(None)]
        if mutants and all_correct:
            chosen = sc.correct_policies() + sc.mutants()
        cells += [(sc.name, p.name, s) for p in chosen for s in strategies]
    if not cells:
        raise CampaignError("the matrix is empty: no scenario has such policies")
    if budget.get("runs") is None and budget.get("duration") is None and budget.get("seeds") is None:
        raise CampaignError("give a budget: --runs N, --duration S or --seeds N")
    return Plan(cells, **budget)


# -- one run, in a Ray worker ---------------------------------------------------------


def execute(spec: dict, directory: str) -> dict:
    """Run one spec as its own process (Ray workers are threaded: fork+exec, never fork alone),
    after cleaning the segments a killed run left on this node; once more if it died by a
    signal (a SIGKILL, the OOM killer), counted once.  A small result: the report stays on disk."""
    from shm import clean_dead_segments

    s = RunSpec(**spec)
    reports = os.path.join(directory, "reports")
    os.makedirs(reports, exist_ok=True)
    report = os.path.join(reports, f"{s.id}.json")
    cmd = [sys.executable, "-m", "stress", *s.args(report)]
    t0 = time.monotonic()
    attempts, rc = 0, -1
    cleaned: list[str] = []
    while attempts < 2:
        attempts += 1
        cleaned += clean_dead_segments()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except BaseException:  # cancelled, interrupted or timed out: the run goes with it
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        rc = proc.returncode
        if rc >= 0:
            break
    cleaned += clean_dead_segments()
    out = {"id": s.id, "spec": spec, "exit": rc, "attempts": attempts, "seconds": round(time.monotonic() - t0, 3)}
    out["cleaned"] = cleaned  # segments dead runs left on this node (a killed attempt's among them)
    out["findings"] = []
    if rc in (EXIT_OK, EXIT_FINDINGS) and os.path.exists(report):
        with open(report) as f:
            doc = json.load(f)
        out["run_id"] = doc.get("run_id")
        out["findings"] = [
            {"check": x["check"], "op": x.get("op"), "site": x.get("site", [])[:SITE_FRAMES], "message": x["message"]}
            for x in doc.get("findings", [])
        ]
        if not out["findings"]:
            os.unlink(report)  # a clean run's report is its line in runs.jsonl
        else:
            out["report"] = report
    else:
        out["error"] = (err or "").strip().splitlines()[-1:] if rc else []
    return out


def shrink_report(report: str, scheduler: str, policy_modules: Sequence[str] = ()) -> dict:
    """A signature's reproducer, made in the background: the run's report shrunk (`mmtorture
    shrink`), or for a free-running run made replayable first (`mmtorture reproduce`, which
    shrinks too).  Its path and what the command printed (the program, the preemptions, the
    finding), or the error."""
    base = report.removesuffix(".json")
    out = base + (".reproduced.json" if scheduler == "free" else ".shrunk.json")
    cmd = [sys.executable, "-m", "stress"]
    if scheduler == "free":
        cmd += ["reproduce", report, "--json", out, "--seconds", str(REPRODUCE_S), "--quiet"]
    else:
        cmd += ["shrink", report, "--json", out, "--quiet"]
    for m in policy_modules:
        cmd += ["--policy-module", m]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"reproducer": None, "error": f"no reproducer within {RUN_TIMEOUT_S:.0f} s"}
    if r.returncode != EXIT_FINDINGS or not os.path.exists(out):
        return {"reproducer": None, "error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    return {"reproducer": out, "text": r.stdout}


# -- signatures -------------------------------------------------------------------------


def signature(scenario: str, policy: str, finding: dict) -> str:
    """What findings of one bug share, whichever run and seed: check, scenario, policy, operation
    and the innermost reporting functions."""
    site = "<".join(finding.get("site") or [])
    return f"{finding['check']} {scenario}/{policy} {finding.get('op') or '-'} {site or '-'}"


def signature_id(sig: str) -> str:
    return hashlib.sha1(sig.encode()).hexdigest()[:10]


@dataclass
class Signature:
    signature: str
    check: str
    scenario: str
    policy: str
    mutant: bool
    expected: bool  # the check is one the mutant names (a correct policy expects none)
    count: int = 0
    first_seen_s: float = 0.0
    last_seen_s: float = 0.0
    runs: list[str] = field(default_factory=list)
    report: str | None = None
    message: str = ""
    reproducer: str | None = None  # the report shrunk: replay it (mmtorture replay)
    reproducer_text: str = ""  # its program, preemptions and finding, as shrink prints them
    reproducer_error: str | None = None

    @property
    def id(self) -> str:
        return signature_id(self.signature)


@dataclass
class Campaign:
    """A campaign's state: what finished (runs.jsonl) and the signatures it found."""

    directory: str
    plan: Plan
    done: dict[str, dict] = field(default_factory=dict)
    signatures: dict[str, Signature] = field(default_factory=dict)
    elapsed_before: float = 0.0  # seconds spent by earlier sessions of this campaign
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    @classmethod
    def create(cls, directory: str, plan: Plan) -> Campaign:
        directory = os.path.abspath(directory)  # what Ray's workers write to, wherever they run
        if os.path.exists(os.path.join(directory, "plan.json")):
            raise CampaignError(f"{directory} already holds a campaign: --resume {directory} continues it")
        os.makedirs(directory, exist_ok=True)
        write_json(os.path.join(directory, "plan.json"), {"schema": CAMPAIGN_SCHEMA, "plan": plan.to_json()})
        return cls(directory, plan)

    @classmethod
    def resume(cls, directory: str) -> Campaign:
        directory = os.path.abspath(directory)
        try:
            with open(os.path.join(directory, "plan.json")) as f:
                doc = json.load(f)
            if doc.get("schema") != CAMPAIGN_SCHEMA:
                raise CampaignError(f"{directory}/plan.json is not a {CAMPAIGN_SCHEMA} plan")
            c = cls(directory, Plan.from_json(doc["plan"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CampaignError(f"cannot resume {directory}: {e}") from None
        from stress.runner import UsageError, load_policy_modules

        try:
            load_policy_modules(c.plan.policy_modules)
        except UsageError as e:
            raise CampaignError(f"cannot resume {directory}: {e}") from None
        try:
            with open(os.path.join(directory, "campaign.json")) as f:
                c.elapsed_before = float(json.load(f).get("seconds", 0.0))
        except (OSError, ValueError):
            pass
        lines = os.path.join(directory, "runs.jsonl")
        if os.path.exists(lines):
            with open(lines) as f:
                for line in f:
                    try:
                        c.record(json.loads(line), write=False)
                    except (ValueError, KeyError):
                        continue  # a line cut short by a kill: that run is run again
        return c

    def record(self, result: dict, write: bool = True) -> list[Signature]:
        """A finished run: its line on disk first, then its signatures; the new ones."""
        if write:
            result = {**result, "at_s": round(self.elapsed, 3)}
            with open(os.path.join(self.directory, "runs.jsonl"), "a") as f:
                f.write(json.dumps(result) + "\n")
        self.done[result["id"]] = result
        spec = result["spec"]
        new = []
        for fnd in result.get("findings", [])[:1]:  # a run stops at its first finding; the rest follow from it
            sig = signature(spec["scenario"], spec["policy"], fnd)
            s = self.signatures.get(sig)
            if s is None:
                from policies import get_scenario

                try:
                    p = get_scenario(spec["scenario"]).policy(spec["policy"])
                    mutant, expected = p.mutant, fnd["check"] in p.expect
                except LookupError:
                    mutant, expected = False, False
                s = self.signatures[sig] = Signature(
                    sig,
                    fnd["check"],
                    spec["scenario"],
                    spec["policy"],
                    mutant,
                    expected,
                    first_seen_s=result.get("at_s", 0.0),
                    report=result.get("report"),
                    message=fnd["message"],
                )
                new.append(s)
            s.count += 1
            s.last_seen_s = result.get("at_s", 0.0)
            if len(s.runs) < 20:
                s.runs.append(result["id"])
        return new

    def pending(self) -> Iterator[RunSpec]:
        """The plan's runs not done yet, within its run budget."""
        left = None if self.plan.runs is None else self.plan.runs - len(self.done)
        for spec in self.plan.specs():
            if left is not None and left <= 0:
                return
            if spec.id in self.done:
                continue
            if left is not None:
                left -= 1
            yield spec

    def out_of_time(self) -> bool:
        return self.plan.duration is not None and self.elapsed >= self.plan.duration

    def summary(self) -> dict:
        runs = list(self.done.values())
        exits: dict[str, int] = {}
        for r in runs:
            exits[str(r["exit"])] = exits.get(str(r["exit"]), 0) + 1
        sigs = sorted(self.signatures.values(), key=lambda s: (s.mutant, -s.count, s.signature))
        return {
            "schema": CAMPAIGN_SCHEMA,
            "directory": self.directory,
            "plan": self.plan.to_json(),
            "seconds": round(self.elapsed, 3),
            "interrupted": self.interrupted,
            "runs": len(runs),
            "exits": exits,
            "retried": sum(r.get("attempts", 1) > 1 for r in runs),
            "runs_per_s": round(len(runs) / max(self.elapsed, 1e-9), 3),
            "correct_policy_signatures": sum(not s.mutant for s in sigs),
            "signatures": [asdict(s) | {"id": s.id} for s in sigs],
        }

    def write_summary(self) -> dict:
        doc = self.summary()
        write_json(os.path.join(self.directory, "campaign.json"), doc)
        return doc


# -- the driver ---------------------------------------------------------------------------


def ray_init(address: str | None):
    """Ray, embedded on this machine unless an address (or RAY_ADDRESS) names a cluster."""
    try:
        import ray
    except ImportError:
        raise CampaignError(INSTALL_HINT) from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        kwargs["object_store_memory"] = OBJECT_STORE_BYTES
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise CampaignError(f"cannot start or reach Ray at {address or 'this machine'}: {e}") from None
    return ray


def run_campaign(
    campaign: Campaign,
    *,
    address: str | None = None,
    say: Callable[[str], None] | None = None,
    on_result: Callable[[dict, list[Signature]], None] | None = None,
) -> dict:
    """Run what is left of the campaign on Ray; the summary (also in campaign.json).

    At most as many runs are in flight as the cluster has CPUs for, so a
    budget in seconds is not overshot by a queue of runs nobody waits for."""
    ray = ray_init(address)
    say = say or (lambda s: None)
    try:
        total = int(ray.cluster_resources().get("CPU", 1))
        node_max = max(int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n.get("Alive")) or 1
        task = ray.remote(max_retries=1)(execute)
        shrinker = ray.remote(max_retries=1)(shrink_report)
        todo = campaign.pending()
        inflight: dict = {}
        reserved = 0
        try:
            while True:
                while not campaign.out_of_time():
                    spec = next(todo, None)
                    if spec is None:
                        break
                    need = min(spec.run_cpus, node_max)
                    ref = task.options(num_cpus=need).remote(asdict(spec), campaign.directory)
                    inflight[ref] = (need, None)
                    reserved += need
                    if reserved >= total:
                        break
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    need, shrunk = inflight.pop(ref)
                    reserved -= need
                    result = ray.get(ref)
                    if shrunk is not None:  # a reproducer came back
                        shrunk.reproducer = result["reproducer"]
                        shrunk.reproducer_text = result.get("text", "")
                        shrunk.reproducer_error = None if shrunk.reproducer else str(result.get("error"))
                        campaign.write_summary()
                        continue
                    new = campaign.record(result)
                    for s in new:
                        say(f"new signature: {s.signature} (run {result['id']})")
                        if s.report:  # shrunk in the background, as soon as it is first seen
                            spec = RunSpec(**result["spec"])
                            ref = shrinker.options(num_cpus=1).remote(s.report, spec.scheduler, spec.policy_modules)
                            inflight[ref] = (1, s)
                            reserved += 1
                    if new:
                        campaign.write_summary()
                    if on_result:
                        on_result(result, new)
        except KeyboardInterrupt:
            campaign.interrupted = True
            for ref in inflight:
                ray.cancel(ref)
            raise
        finally:
            signatures_plot(campaign.write_summary(), os.path.join(campaign.directory, "campaign.png"))
    finally:
        ray.shutdown()
    return campaign.summary()


def signatures_plot(doc: dict, path: str) -> bool:
    """campaign.png: signatures found against time, a correct policy's apart; False without
    matplotlib (the bench extra)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, mutant in (("in mutants", True), ("in correct policies", False)):
        times = sorted(s["first_seen_s"] for s in doc["signatures"] if s["mutant"] == mutant)
        if times or mutant:
            ax.step(
                [0.0, *times, doc["seconds"]], [0, *range(1, len(times) + 1), len(times)], where="post", label=label
            )
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("seconds")
    ax.set_ylabel("signatures")
    ax.set_title(f"{doc['runs']} runs, {len(doc['signatures'])} signatures")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def summary_table(doc: dict) -> str:
    """The campaign's signatures: a correct policy's first (the headline), then the mutants'."""
    lines = [
        f"{doc['runs']} runs in {doc['seconds']:.1f} s ({doc['runs_per_s']:.2f}/s), "
        f"{len(doc['signatures'])} signature(s), {doc['correct_policy_signatures']} in correct policies"
        + (", interrupted" if doc["interrupted"] else "")
    ]
    if doc["signatures"]:
        lines.append("| signature | count | first seen | last seen | runs | expected |")
        lines.append("|---|---:|---:|---:|---|---|")
        for s in doc["signatures"]:
            tag = "CORRECT POLICY" if not s["mutant"] else ("yes" if s["expected"] else "no: another check")
            lines.append(
                f"| {s['signature']} | {s['count']} | {s['first_seen_s']:.1f} s | {s['last_seen_s']:.1f} s "
                f"| {s['runs'][0]}{' ...' if len(s['runs']) > 1 else ''} | {tag} |"
            )
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------


def add_arguments(p) -> None:
    """`mmtorture campaign`'s options (an argparse parser)."""
    p.add_argument("--scenario", "-s", action="append", default=[], help="a scenario (repeatable; default: every one)")
    p.add_argument("--policy", "-p", action="append", default=[], help="a policy of those scenarios (repeatable)")
    p.add_argument("--all", action="store_true", help="every correct policy of the scenarios")
    p.add_argument("--mutants", action="store_true", help="every mutant of the scenarios: a blind hunt at scale")
    p.add_argument(
        "--strategy", action="append", default=[], choices=STRATEGIES, help="how runs search (repeatable; default mix)"
    )
    p.add_argument("--first-seed", type=int, default=0, metavar="N", help="the cells' first seed (default 0)")
    p.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds per cell")
    p.add_argument("--runs", type=int, default=None, metavar="N", help="a budget in runs")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="a budget in seconds")
    p.add_argument(
        "--cpus", type=int, default=2, metavar="N", help="CPUs of a run (default 2; swarm adds one on odd seeds)"
    )
    p.add_argument("--ops", type=int, default=None, metavar="N", help="operations per CPU (default: as hunt)")
    p.add_argument("--dir", metavar="DIR", help="the campaign's directory (default campaign-TIMESTAMP)")
    p.add_argument("--resume", metavar="DIR", help="continue the campaign in DIR: what finished is not run again")
    p.add_argument("--address", help="a Ray cluster (default RAY_ADDRESS, else an embedded Ray on this machine)")
    p.add_argument(
        "--policy-module",
        action="append",
        default=[],
        metavar="MOD",
        help="import a module or .py file that registers scenarios (repeatable; every run loads it too)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="only the summary")


def command(args) -> int:
    """`mmtorture campaign`: 0 when no correct policy has a signature, 1 when one has, 2 bad input,
    130/143 interrupted by SIGINT/SIGTERM (what finished is kept: --resume continues)."""
    for name in ("seeds", "runs", "cpus", "ops"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CampaignError(f"--{name} must be a positive integer, not {v}")
    if args.duration is not None and not args.duration > 0:
        raise CampaignError(f"--duration must be a positive number of seconds, not {args.duration}")
    if args.resume:
        if args.scenario or args.policy or args.all or args.mutants:
            raise CampaignError("--resume takes the plan from the campaign's directory: no matrix options")
        campaign = Campaign.resume(args.resume)
    else:
        plan = build_plan(
            args.scenario,
            args.policy,
            args.strategy or ["mix"],
            all_correct=args.all,
            mutants=args.mutants,
            first_seed=args.first_seed,
            seeds=args.seeds,
            runs=args.runs,
            duration=args.duration,
            cpus=args.cpus,
            ops=args.ops,
            policy_modules=[os.path.abspath(m) if os.path.exists(m) else m for m in args.policy_module],
        )
        campaign = Campaign.create(args.dir or time.strftime("campaign-%Y%m%d-%H%M%S"), plan)
    stopped_by: list[int] = []

    def stop(signum, frame) -> None:  # SIGTERM ends a campaign as Ctrl-C does: what finished is kept
        stopped_by.append(signum)
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, stop)
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    say(
        f"campaign in {campaign.directory}: {len(campaign.plan.cells)} cell(s), {len(campaign.done)} run(s) done before"
    )
    bar = _progress(campaign, args.quiet)
    try:
        doc = run_campaign(
            campaign,
            address=args.address,
            say=(bar.write if bar is not None else say),
            on_result=(lambda r, new: _tick(bar, campaign)) if bar is not None else None,
        )
    except KeyboardInterrupt:
        print(summary_table(campaign.summary()), file=sys.stderr)
        print(f"interrupted: kept in {campaign.directory} (mmtorture campaign --resume {campaign.directory})")
        return 143 if stopped_by == [signal.SIGTERM] else 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if bar is not None:
            bar.close()
    print(summary_table(doc))
    print(f"campaign.json: {os.path.join(campaign.directory, 'campaign.json')}")
    if os.path.exists(png := os.path.join(campaign.directory, "campaign.png")):
        print(f"signatures over time: {png}")
    return EXIT_FINDINGS if doc["correct_policy_signatures"] else EXIT_OK


def _progress(campaign: Campaign, quiet: bool):
    """A live line on a terminal: runs done, runs/s, signatures, ETA (tqdm's)."""
    if quiet or not sys.stderr.isatty() or os.environ.get("CI"):
        return None
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    p = campaign.plan
    if p.runs is not None:
        return tqdm(total=p.runs, initial=len(campaign.done), unit="run", file=sys.stderr, leave=False)
    if p.seeds is not None and p.duration is None:
        total = p.seeds * len(p.cells)
        return tqdm(total=total, initial=len(campaign.done), unit="run", file=sys.stderr, leave=False)
    return tqdm(unit="run", initial=len(campaign.done), file=sys.stderr, leave=False)


def _tick(bar, campaign: Campaign) -> None:
    bar.update(1)
    bar.set_postfix(signatures=len(campaign.signatures), refresh=False)
