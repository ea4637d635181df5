"""The `mmtorture` command (also `python -m stress`).

Exit codes: 0 no finding, 1 findings, 2 bad usage or input (one line, no
traceback), 3 the harness itself failed, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from stress.campaign import CampaignError
from stress.hunt import STRATEGIES as HUNT_STRATEGIES
from stress.knobs import KNOBS
from stress.report import EXIT_FINDINGS, EXIT_HARNESS, EXIT_OK, EXIT_USAGE, SUITE_SCHEMA, end_line, write_json
from stress.runner import Interrupted, Runner, UsageError, check_json_path

PROG = "mmtorture"
HUNT_SCHEMA = "mmtorture-hunt/3"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


MODULE_HELP = (
    "import a module or .py file that registers scenarios (repeatable; also "
    "MMTORTURE_POLICY_MODULE, several separated by ':')"
)


def _add_knobs(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    for k in KNOBS:
        if defaults and k.name in defaults:
            shown = f"{defaults[k.name]}{' ' + k.unit if k.unit else ''}"
        else:
            shown = k.shown_default()
        helptext = f"{k.help} (default {shown}; env {k.env_var})"
        if k.flag:
            p.add_argument(k.option, dest=k.name, action="store_true", default=None, help=helptext)
        else:
            p.add_argument(k.option, dest=k.name, default=None, metavar=k.metavar or "V", help=helptext)


def _run_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    p.add_argument("--scenario", "-s", help="scenario name (see `mmtorture list`)")
    p.add_argument("--policy", "-p", help="policy name; default the scenario's first correct one")
    p.add_argument(
        "--all", action="store_true", help="every scenario's correct policies, the duration shared among them"
    )
    p.add_argument(
        "--litmus",
        nargs="?",
        const="",
        metavar="MUTANT",
        help="run a litmus program (a mutant's small program in which its race is reachable; "
        "default: the policy's own, which must be a mutant) instead of a generated one",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the JSON report here (default: a failing run writes "
        "mmtorture-report-RUN.json in the working directory)",
    )
    p.add_argument("--policy-module", action="append", default=[], metavar="MOD", help=MODULE_HELP)
    p.add_argument("--quiet", "-q", action="store_true", help="only the summary's last line")
    _add_knobs(p, defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="A userspace torture laboratory for Linux MM page-table concurrency designs."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _run_args(sub.add_parser("run", help="run a scenario/policy (or --all) and report findings"))
    _run_args(
        sub.add_parser("soak", help="a long run that counts findings by check instead of stopping"),
        {"duration": 600.0, "keep_going": True},
    )
    lp = sub.add_parser("list", help="scenarios and policies, correct and mutant (or --checks)")
    lp.add_argument(
        "--checks", action="store_true", help="every check: its id, kind, meaning and the mutants that prove it"
    )
    lp.add_argument("--json", action="store_true", help="machine-readable list")
    lp.add_argument("--policy-module", action="append", default=[], metavar="MOD", help=MODULE_HELP)
    rp = sub.add_parser("replay", help="run a report's program and schedule again; same findings?")
    rp.add_argument("report", help="a JSON report of a controlled run")
    rp.add_argument("--times", type=_count, default=1, metavar="N", help="replay N times (default 1)")
    rp.add_argument("--json", metavar="PATH", help="write the (last) replay's report here")
    rp.add_argument(
        "--policy-module",
        action="append",
        default=[],
        metavar="MOD",
        help=MODULE_HELP + "; the report's own modules are loaded too",
    )
    rp.add_argument("--quiet", "-q", action="store_true", help="only the verdict")
    sp = sub.add_parser("shrink", help="reduce a failing report's program and schedule; write a new report")
    sp.add_argument("report", help="a JSON report of a controlled run with a finding")
    sp.add_argument("--json", metavar="PATH", help="where to write the shrunk report (default REPORT.shrunk.json)")
    sp.add_argument("--check", help="the check the shrunk run must still trip (default: the report's first finding's)")
    sp.add_argument("--max-runs", type=_count, default=2000, metavar="N", help="replay budget (default 2000)")
    sp.add_argument(
        "--policy-module",
        action="append",
        default=[],
        metavar="MOD",
        help=MODULE_HELP + "; the report's own modules are loaded too",
    )
    sp.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    rp = sub.add_parser(
        "reproduce",
        help="a free-running finding made replayable: search the last operations "
        "of every CPU under control until the same check fires; shrink it",
    )
    rp.add_argument("report", help="a JSON report of a free-running run with a finding")
    rp.add_argument("--json", metavar="PATH", help="where to write the reproducer (default REPORT.reproduced.json)")
    rp.add_argument(
        "--max-runs",
        type=_count,
        default=None,
        metavar="N",
        help="search budget in runs (default: none, --seconds bounds it)",
    )
    rp.add_argument("--seconds", type=float, default=120.0, metavar="S", help="search budget in seconds (default 120)")
    rp.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    hp = sub.add_parser("hunt", help="every mutant, seed after seed, until caught by the check it names")
    hp.add_argument("--scenario", "-s", help="only this scenario's mutants")
    hp.add_argument("--max-seeds", type=_count, default=300, metavar="N", help="seeds per mutant (default 300)")
    hp.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds per mutant, whichever budget ends first (default 60)",
    )
    hp.add_argument(
        "--strategy",
        default="mix",
        choices=HUNT_STRATEGIES,
        help="how to search: mix (random, swarm and pct by turns; the default), random, swarm, pct, "
        "free (free-running with delays at sampled accesses), pmc (communication-directed)",
    )
    hp.add_argument(
        "--litmus",
        action="store_true",
        help="hunt a mutant that has a litmus program on it (a regression test, not a blind hunt)",
    )
    hp.add_argument(
        "--ops", type=_count, metavar="N", help="operations per CPU (default 40, and 200 for swarm programs)"
    )
    hp.add_argument("--cpus", type=_count, default=2, metavar="N", help="CPUs (default 2)")
    hp.add_argument("--pct-depth", type=_count, default=3, metavar="D", help="PCT depth (default 3)")
    hp.add_argument("--json", metavar="PATH", help="write the table as JSON here")
    hp.add_argument(
        "--reports",
        metavar="DIR",
        help="keep the report of each catch in this directory, "
        "to replay and shrink (the printed command reproduces each catch either way)",
    )
    hp.add_argument("--policy-module", action="append", default=[], metavar="MOD", help=MODULE_HELP)
    bp = sub.add_parser("bench", help="benchmarks (JSON output)")
    bp.add_argument(
        "what", choices=["primitives", "scheduler", "vma", "pte_ref", "detection", "campaign"], help="which benchmark"
    )
    bp.add_argument("--json", metavar="PATH", help="write the results here")
    bp.add_argument("--plot", metavar="PNG", help="vma, pte_ref, detection, campaign: write the chart here")
    bp.add_argument(
        "--scenario",
        "-s",
        help="detection: only this scenario's mutants (an existing --json measured alike keeps the others' rows)",
    )
    bp.add_argument("--quick", action="store_true", help="fewer iterations")
    ip = sub.add_parser("inspect", help="the CPUs and findings of a live run's machine segment")
    ip.add_argument("segment", help="a machine segment name (see /dev/shm/mmtorture-*-0)")
    from stress import campaign

    campaign.add_arguments(
        sub.add_parser("campaign", help="a matrix of runs on Ray (embedded or a cluster), findings by signature")
    )
    cp = sub.add_parser("clean", help="remove segments whose creator process is dead")
    cp.add_argument("--all", action="store_true", help="remove every mmtorture segment")
    return parser


def _count(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {s!r}")
    return v


def _load_modules(mods: Sequence[str]) -> None:
    from stress.runner import load_policy_modules

    load_policy_modules(mods)


def _knob_values(args: argparse.Namespace, soak: bool) -> dict:
    given = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name) is not None}
    if soak:
        given.setdefault("keep_going", True)
        given.setdefault("duration", 600.0)
    return given


def _litmus(args: argparse.Namespace, knobs: dict) -> list | None:
    """The litmus program --litmus names, with the knobs it needs (its CPUs, a controlled scheduler)."""
    if args.litmus is None:
        return None
    from stress.runner import resolve

    sc, pol = resolve(args.scenario, args.policy, args.policy_module)
    name = args.litmus or pol.name
    owner = sc.policy(name) if name != pol.name else pol
    program = sc.litmus(owner)
    if program is None:
        have = [p.name for p in sc.policies if sc.litmus(p)]
        raise UsageError(
            f"{sc.name}/{name} has no litmus program" + (f" (these have: {', '.join(have)})" if have else "")
        )
    if knobs.get("cpus") not in (None, len(program)):
        raise UsageError(f"the litmus program of {name} runs on {len(program)} CPUs, not {knobs['cpus']}")
    knobs["cpus"] = len(program)
    if knobs.setdefault("scheduler", "random") == "free":
        raise UsageError("a litmus program runs under the controlled scheduler: --scheduler random or pct")
    return program


def cmd_run(args: argparse.Namespace, soak: bool = False) -> int:
    knobs = _knob_values(args, soak)
    if args.all == bool(args.scenario):
        raise UsageError("give either --scenario NAME or --all")
    if args.all and (args.policy or args.litmus is not None):
        raise UsageError("--policy and --litmus go with --scenario, not --all")
    if args.all:
        return _run_suite(args, knobs)
    program = _litmus(args, knobs)
    r = Runner(
        args.scenario,
        args.policy,
        knobs,
        args.json,
        policy_modules=args.policy_module,
        quiet=args.quiet,
        program=program,
        save_failing=os.getcwd(),
    )
    result = r.run()
    if args.quiet:
        from stress.report import reproduce_lines

        for line in reproduce_lines(result.report, None if args.json else result.report_path):
            print(line.strip())
        print(end_line(result.exit_code, result.report))
    return result.exit_code


def _run_suite(args: argparse.Namespace, knobs: dict) -> int:
    """Every correct policy of every scenario, one verdict for the suite."""
    from policies import scenarios
    from stress.report import duration_text
    from stress.runner import load_policy_modules

    check_json_path(args.json)
    modules = load_policy_modules(args.policy_module)
    pairs = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]
    total = float(knobs.get("duration") or 60.0)
    share = round(max(total / len(pairs), 0.5), 3)
    reports, worst = [], EXIT_OK
    for name, pol in pairs:
        k = dict(knobs, duration=share, stat_interval=knobs.get("stat_interval", max(share / 2, 1)))
        result = Runner(
            name, pol, k, None, policy_modules=modules, quiet=args.quiet, verdict=False, save_failing=os.getcwd()
        ).run()
        reports.append(result.report)
        worst = max(worst, result.exit_code) if result.exit_code < 128 else result.exit_code
        if result.exit_code >= 128:
            break
    failed = [f"{r['scenario']}/{r['policy']}" for r in reports if r["findings"] or r.get("harness_errors")]
    print(
        f"suite: {len(reports)} of {len(pairs)} runs, {sum(r['ops'] for r in reports)} ops in "
        f"{duration_text(sum(r['duration_s'] for r in reports))}, "
        + (f"{len(failed)} failed: {', '.join(failed)}" if failed else "every run clean")
        + (" (interrupted)" if worst >= 128 else "")
    )
    if args.json:
        write_json(
            args.json,
            {
                "schema": SUITE_SCHEMA,
                "runs": reports,
                "findings": sum(len(r["findings"]) for r in reports),
                "interrupted": worst >= 128,
            },
        )
    print(end_line(worst))
    return worst


def check_table() -> list[dict]:
    """Every check with the mutants that prove it (a mutant proves the checks it names)."""
    from policies import scenarios
    from shm.checks import all_checks

    provers: dict[str, list[str]] = {}
    for s in scenarios().values():
        for p in s.mutants():
            for c in p.expect:
                provers.setdefault(c, []).append(f"{s.name}/{p.name}")
    return [
        {"check": c.id, "kind": c.kind, "meaning": c.meaning, "mutants": provers.get(c.id, [])} for c in all_checks()
    ]


def cmd_list(args: argparse.Namespace) -> int:
    from policies import scenarios

    _load_modules(args.policy_module)
    if args.checks:
        table = check_table()
        if args.json:
            json.dump(table, sys.stdout, indent=1)
            print()
            return EXIT_OK
        w = max(len(r["check"]) for r in table)
        print(f"{'CHECK':<{w}}  {'KIND':<15}  MEANING / PROVED BY")
        for r in table:
            print(f"{r['check']:<{w}}  {r['kind']:<15}  {r['meaning']}")
            print(f"{'':<{w}}  {'':<15}  proved by: {', '.join(r['mutants']) or 'NO MUTANT'}")
        return EXIT_OK
    rows = [
        {
            "scenario": s.name,
            "policy": p.name,
            "mutant": p.mutant,
            "expect": list(p.expect),
            "witness": p.witness or None,
            "source": p.source,
            "doc": p.doc,
            "litmus": s.litmus(p) is not None,
        }
        for s in scenarios().values()
        for p in s.policies
    ]
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
        return EXIT_OK
    w1 = max(len(r["scenario"]) for r in rows)
    w2 = max(len(r["policy"]) for r in rows)
    print(f"{'SCENARIO':<{w1}}  {'POLICY':<{w2}}  {'KIND':<7}  CHECK IT TRIPS (THE PASSAGE) / WHAT IT IS")
    for r in rows:
        kind = "mutant" if r["mutant"] else "correct"
        what = " or ".join(r["expect"]) + f"  ({r['source']})" if r["mutant"] else r["doc"]
        print(f"{r['scenario']:<{w1}}  {r['policy']:<{w2}}  {kind:<7}  {what}")
    return EXIT_OK


def _scenario(name: str) -> None:
    """A scenario named on the command line exists, or one line and exit 2."""
    from policies import get_scenario

    try:
        get_scenario(name)
    except LookupError as e:
        raise UsageError(str(e).strip("'\"")) from None


def cmd_bench(args: argparse.Namespace) -> int:
    from stress.bench import bench_primitives, bench_scheduler
    from stress.bench_vma import bench_vma

    check_json_path(args.json)
    check_json_path(args.plot)
    if args.plot and args.what not in ("vma", "pte_ref", "detection", "campaign"):
        raise UsageError("--plot is for `bench vma`, `bench pte_ref`, `bench detection` and `bench campaign`")
    if args.scenario and args.what != "detection":
        raise UsageError("--scenario is for `bench detection`")
    if args.what == "detection":
        from stress.detection import bench_detection

        if args.scenario:
            _scenario(args.scenario)
        bench_detection(args.json, quick=args.quick, plot=args.plot, scenario=args.scenario)
    elif args.what == "campaign":
        from stress.campaign.bench import bench_campaign

        bench_campaign(args.json, quick=args.quick, plot=args.plot)
    elif args.what == "vma":
        bench_vma(args.json, quick=args.quick, plot=args.plot)
    elif args.what == "pte_ref":
        from stress.bench_pte_ref import bench_pte_ref

        bench_pte_ref(args.json, quick=args.quick, plot=args.plot)
    else:
        (bench_primitives if args.what == "primitives" else bench_scheduler)(args.json, quick=args.quick)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from stress.replay import load_report, mismatch, replay

    report = load_report(args.report)
    check_json_path(args.json)
    _load_modules(args.policy_module)
    code = EXIT_OK
    for i in range(1, args.times + 1):
        last = i == args.times
        r = replay(
            report,
            json_path=args.json if last else None,
            quiet=args.quiet or not last,
            policy_modules=args.policy_module,
        )
        if r.exit_code >= 128 or r.exit_code == EXIT_HARNESS:
            return r.exit_code
        if r.report.get("diverged"):
            print(f"{PROG}: replay {i}/{args.times} diverged: {r.report['diverged']['message']}", file=sys.stderr)
            return EXIT_USAGE
        why = mismatch(report, r)
        if why:
            print(f"{PROG}: replay {i}/{args.times} diverged: {why}", file=sys.stderr)
            return EXIT_USAGE
        code = r.exit_code
    n = len(report["findings"])
    print(
        f"replay: reproduced {args.times}/{args.times}: "
        + (f"{n} finding(s), first [{report['findings'][0]['check']}]" if n else "no finding")
    )
    return code


def cmd_shrink(args: argparse.Namespace) -> int:
    from stress.replay import load_report
    from stress.shrink import shrink

    report = load_report(args.report)
    out = args.json or (args.report.removesuffix(".json") + ".shrunk.json")
    check_json_path(out)
    _load_modules(args.policy_module)
    say = None if args.quiet else (lambda s: print(f"shrink: {s}", flush=True))
    res = shrink(
        report, check=args.check, max_runs=args.max_runs, json_path=out, say=say, policy_modules=args.policy_module
    )
    return _print_shrunk(res, out)


def _print_shrunk(res, out: str) -> int:
    """A shrunk run as the seeds draw their races: one column per CPU, time downwards, the
    finding at the bottom (stress.race); and the whole program when the drawing leaves some out."""
    from policies import get_scenario
    from stress.program import describe, from_json
    from stress.race import columns

    print(res.summary())
    report = res.final.report
    drawn = columns(report)
    if not drawn or report["interleaving"]["not_drawn"]:
        sc = get_scenario(report["scenario"])
        ops = sc.operations(sc.policy(report["policy"]))
        for line in describe(from_json(res.after.program, ops), ops):
            print(f"  {line}")
    for line in drawn:
        print(f"  {line}".rstrip())
    print(f"written to {out}; replay with: {PROG} replay {out}")
    return res.final.exit_code


def cmd_reproduce(args: argparse.Namespace) -> int:
    from stress.replay import read_report
    from stress.reproduce import reproduce
    from stress.shrink import shrink

    report = read_report(args.report)
    out = args.json or (args.report.removesuffix(".json") + ".reproduced.json")
    check_json_path(out)
    _load_modules(report.get("policy_modules", []))
    say = None if args.quiet else (lambda s: print(f"reproduce: {s}", flush=True))
    found = reproduce(report, max_runs=args.max_runs, max_seconds=args.seconds, say=say)
    if found is None:
        runs = f"{args.max_runs} runs or " if args.max_runs else ""
        print(
            f"reproduce: no controlled run of the last operations tripped {report['findings'][0]['check']} "
            f"within {runs}{args.seconds:g} s"
        )
        return EXIT_FINDINGS
    print(
        f"reproduce: [{found.check}] on the last {found.window} operations of each CPU, seed {found.seed}, "
        f"after {found.runs} runs in {found.seconds:.1f}s"
    )
    res = shrink(found.result.report, json_path=out)
    res.final.report["reproduces"] = {
        "report": os.path.abspath(args.report),
        "window": found.window,
        "seed": found.seed,
        "runs": found.runs,
    }
    write_json(out, res.final.report)
    return _print_shrunk(res, out)


def cmd_hunt(args: argparse.Namespace) -> int:
    from stress.hunt import FREE_RUN_S, HEADER, OPS, PMC_OPS, SWARM_OPS, hunt

    check_json_path(args.json)
    _load_modules(args.policy_module)
    if args.reports:
        if not os.path.isdir(args.reports):
            raise UsageError(f"--reports {args.reports!r} is not a directory")
        check_json_path(os.path.join(args.reports, "x.json"))
    if args.scenario:
        _scenario(args.scenario)
    print(HEADER, flush=True)
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be a positive number, not {args.seconds}")
    rows: list = []
    try:
        hunt(
            scenario=args.scenario,
            max_seeds=args.max_seeds,
            ops=args.ops,
            cpus=args.cpus,
            depth=args.pct_depth,
            say=lambda s: print(s, flush=True),
            policy_modules=args.policy_module,
            reports=args.reports,
            strategy=args.strategy,
            litmus=args.litmus,
            max_seconds=args.seconds,
            rows=rows,
        )
    except KeyboardInterrupt:
        if args.json:
            write_json(args.json, {"schema": HUNT_SCHEMA, "interrupted": True, "rows": [r.to_json() for r in rows]})
        raise
    errors = [r for r in rows if r.error]
    missed = [r for r in rows if r.caught is None and not r.error]
    wrong = [r for r in missed if r.others]
    ops = (
        f"{PMC_OPS} ops"
        if args.strategy == "pmc"
        else f"{args.ops} ops"
        if args.ops
        else f"{SWARM_OPS} ops"
        if args.strategy == "swarm"
        else f"{OPS} ops ({SWARM_OPS} for swarm)"
        if args.strategy == "mix"
        else f"{OPS} ops"
    )
    programs = f"runs of {FREE_RUN_S:g} s" if args.strategy == "free" else f"generated programs of {ops} per CPU"
    print(
        f"hunt: {len(rows) - len(missed) - len(errors)}/{len(rows)} mutants caught by the check they name"
        + (f"; {len(missed)} not caught" if missed else "")
        + (f" ({len(wrong)} found only by another check)" if wrong else "")
        + (f"; {len(errors)} ended in a harness error" if errors else "")
        + f" ({'blind, ' if not args.litmus else ''}{args.strategy} on {programs} "
        f"on {args.cpus} CPUs, at most {args.max_seeds} seeds or {args.seconds:g} s per mutant"
        + ("; random on litmus programs" if args.litmus else "")
        + ")"
    )
    if args.json:
        write_json(args.json, {"schema": HUNT_SCHEMA, "rows": [r.to_json() for r in rows]})
    if errors:
        print(end_line(EXIT_HARNESS))
        return EXIT_HARNESS
    failed = bool(missed)
    print(end_line(EXIT_FINDINGS if failed else EXIT_OK))
    return EXIT_FINDINGS if failed else EXIT_OK


def _attach_state(m, info: dict) -> list[str]:
    """Attach the run's state segment so that locks and waits have their names; the operation
    names.  Best effort: a scenario that cannot be loaded here leaves raw addresses."""
    from policies import get_scenario
    from shm import Segment
    from stress.runner import load_policy_modules

    try:
        load_policy_modules(info.get("policy_modules", []))
        sc = get_scenario(info["scenario"])
        pol = sc.policy(info["policy"])
        base = m.seg.name.rsplit("-", 1)[0]
        m.add_segment(Segment.attach(f"{base}-1", sc.layout(m.ncpus)))
        return [op.name for op in sc.operations(pol)]
    except Exception:  # noqa: BLE001 - inspect shows what it can
        return []


def cmd_inspect(args: argparse.Namespace) -> int:
    from shm import LayoutError, Machine
    from shm.cpu import irqs_off
    from shm.machine import CPU_STATUS
    from stress.watchdog import Watchdog

    try:
        m = Machine.attach(args.segment.removeprefix("/dev/shm/"))
    except LayoutError as e:
        raise UsageError(str(e)) from None
    try:
        info = m.run_info()
        ops = _attach_state(m, info)
        wd = Watchdog(m, 1.0, ops)
        label = f"{info.get('scenario', '?')}/{info.get('policy', '?')} (runner pid {info.get('pid', '?')})"
        print(
            f"{args.segment}: {label}, {m.ncpus} CPUs, {'stopping' if m.stop_requested() else 'running'}, "
            f"{m.finding_count()} finding(s), {m.pool.nr_free()} of {m.pool.npages} pages free, "
            f"{m.rcu.gp_seq()} grace periods"
        )
        for i in range(m.nslots):
            c = m.cpus[i]
            who = "gp kthread" if i == m.gp_cpu else "boot" if i == m.boot_cpu else f"cpu {i}"
            status = CPU_STATUS[int(c["status"])] if 0 <= c["status"] < len(CPU_STATUS) else "?"
            op = int(c["op"])
            opname = ops[op] if 0 <= op < len(ops) else ("-" if op < 0 else f"operation {op}")
            wait = wd.describe_wait(int(c["waiting_on"])) if c["waiting_on"] else "-"
            irqs = "off" if irqs_off(int(c["irqs_disabled"])) else "on "
            print(
                f"  {who:>10}  pid {int(c['pid']):>7}  {status:<8} in {opname:<16} "
                f"{int(c['heartbeat']):>9} ops  irqs {irqs}  waits for {wait}"
            )
        for cpu, locks in wd.held_locks().items():
            print(f"  {cpu} holds {', '.join(locks)}")
    finally:
        m.close()
    return EXIT_OK


def cmd_clean(args: argparse.Namespace) -> int:
    from shm import clean_dead_segments

    removed = clean_dead_segments(all_runs=args.all)
    for name in removed:
        print(f"removed /dev/shm/{name}")
    print(f"{len(removed)} segment(s) removed")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "soak"):
            return cmd_run(args, soak=args.command == "soak")
        if args.command == "list":
            return cmd_list(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "replay":
            return cmd_replay(args)
        if args.command == "shrink":
            return cmd_shrink(args)
        if args.command == "reproduce":
            return cmd_reproduce(args)
        if args.command == "hunt":
            return cmd_hunt(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "clean":
            return cmd_clean(args)
        if args.command == "campaign":
            from stress.campaign import command

            return command(args)
    except (UsageError, CampaignError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as e:
        print(f"{PROG}: {e}: stopped", file=sys.stderr)
        return e.result.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - the harness failed; say so in one line
        print(f"{PROG}: harness error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_HARNESS
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
