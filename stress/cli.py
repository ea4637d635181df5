"""The `mmtorture` command (also `python -m stress`).

Exit codes: 0 no finding, 1 findings, 2 bad usage or input (one line, no
traceback), 3 the harness itself failed, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from stress.knobs import KNOBS
from stress.report import EXIT_HARNESS, EXIT_OK, EXIT_USAGE, SUITE_SCHEMA, end_line, write_json
from stress.runner import Runner, UsageError, check_json_path

PROG = "mmtorture"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _add_knobs(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    for k in KNOBS:
        d = (defaults or {}).get(k.name, k.default)
        shown = d() if callable(d) else d
        unit = f" {k.unit}" if k.unit else ""
        helptext = f"{k.help} (default {shown}{unit}; env {k.env_var})"
        if k.flag:
            p.add_argument(k.option, dest=k.name, action="store_true", default=None, help=helptext)
        else:
            p.add_argument(k.option, dest=k.name, default=None, metavar=k.metavar or "V", help=helptext)


def _run_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    p.add_argument("--scenario", "-s", help="scenario name (see `mmtorture list`)")
    p.add_argument("--policy", "-p", help="policy name; default the scenario's first correct one")
    p.add_argument("--all", action="store_true",
                   help="every scenario's correct policies, the duration shared among them")
    p.add_argument("--json", metavar="PATH", help="write the JSON report here")
    p.add_argument("--policy-module", action="append", default=[], metavar="MOD",
                   help="import a module or .py file that registers scenarios (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="only the summary's last line")
    _add_knobs(p, defaults)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="A userspace torture laboratory for Linux MM "
                     "page-table concurrency designs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _run_args(sub.add_parser("run", help="run a scenario/policy (or --all) and report findings"))
    _run_args(
        sub.add_parser("soak", help="a long run that counts findings instead of stopping"),
        {"duration": 600.0, "keep_going": True},
    )
    lp = sub.add_parser("list", help="scenarios and policies, correct and mutant")
    lp.add_argument("--json", action="store_true", help="machine-readable list")
    lp.add_argument("--policy-module", action="append", default=[], metavar="MOD")
    bp = sub.add_parser("bench", help="benchmarks (JSON output)")
    bp.add_argument("what", choices=["primitives"], help="which benchmark")
    bp.add_argument("--json", metavar="PATH", help="write the results here")
    bp.add_argument("--quick", action="store_true", help="fewer iterations")
    ip = sub.add_parser("inspect", help="the CPUs and findings of a live run's machine segment")
    ip.add_argument("segment", help="a machine segment name (see /dev/shm/mmtorture-*-0)")
    cp = sub.add_parser("clean", help="remove segments whose creator process is dead")
    cp.add_argument("--all", action="store_true", help="remove every mmtorture segment")
    return parser


def _knob_values(args: argparse.Namespace, soak: bool) -> dict:
    given = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name) is not None}
    if soak:
        given.setdefault("keep_going", True)
        given.setdefault("duration", 600.0)
    return given


def cmd_run(args: argparse.Namespace, soak: bool = False) -> int:
    knobs = _knob_values(args, soak)
    if args.all == bool(args.scenario):
        raise UsageError("give either --scenario NAME or --all")
    if args.all and args.policy:
        raise UsageError("--policy goes with --scenario, not --all")
    if not args.all:
        r = Runner(args.scenario, args.policy, knobs, args.json, policy_modules=args.policy_module,
                   quiet=args.quiet)
        result = r.run()
        if args.quiet:
            print(end_line(result.exit_code != EXIT_OK))
        return result.exit_code
    return _run_suite(args, knobs)


def _run_suite(args: argparse.Namespace, knobs: dict) -> int:
    from policies import load_module, scenarios

    check_json_path(args.json)
    for m in args.policy_module:
        try:
            load_module(m)
        except LookupError as e:
            raise UsageError(str(e)) from None
    pairs = [(s.name, p.name) for s in scenarios().values() for p in s.correct_policies()]
    total = float(knobs.get("duration", 60.0))
    share = max(total / len(pairs), 0.5)
    reports, worst = [], EXIT_OK
    for name, pol in pairs:
        k = dict(knobs, duration=share, stat_interval=knobs.get("stat_interval", max(share / 2, 1)))
        result = Runner(name, pol, k, None, policy_modules=args.policy_module, quiet=args.quiet).run()
        reports.append(result.report)
        worst = max(worst, result.exit_code) if result.exit_code < 128 else result.exit_code
        if result.exit_code >= 128:
            break
    failed = [r for r in reports if r["findings"] or r.get("error")]
    print(f"suite: {len(reports)} runs, {sum(r['ops'] for r in reports)} ops, "
          f"{len(failed)} with findings" + (" (interrupted)" if worst >= 128 else ""))
    if args.json:
        write_json(args.json, {
            "schema": SUITE_SCHEMA,
            "runs": reports,
            "findings": sum(len(r["findings"]) for r in reports),
            "interrupted": worst >= 128,
        })
    print(end_line(worst != EXIT_OK))
    return worst


def cmd_list(args: argparse.Namespace) -> int:
    from policies import load_module, scenarios

    for m in args.policy_module:
        try:
            load_module(m)
        except LookupError as e:
            raise UsageError(str(e)) from None
    rows = [
        {
            "scenario": s.name,
            "policy": p.name,
            "mutant": p.mutant,
            "expect": list(p.expect),
            "source": p.source,
            "doc": p.doc,
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
    print(f"{'SCENARIO':<{w1}}  {'POLICY':<{w2}}  {'KIND':<7}  EXPECTS / WHAT")
    for r in rows:
        kind = "mutant" if r["mutant"] else "correct"
        what = " or ".join(r["expect"]) + f"  ({r['source']})" if r["mutant"] else r["doc"]
        print(f"{r['scenario']:<{w1}}  {r['policy']:<{w2}}  {kind:<7}  {what}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from stress.bench import bench_primitives

    check_json_path(args.json)
    bench_primitives(args.json, quick=args.quick)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from shm import LayoutError, Machine
    from shm.machine import CPU_STATUS
    from stress.watchdog import Watchdog

    try:
        m = Machine.attach(args.segment.removeprefix("/dev/shm/"))
    except LayoutError as e:
        raise UsageError(str(e)) from None
    try:
        wd = Watchdog(m, 1.0, [])
        print(f"{args.segment}: {m.ncpus} CPUs, stop={int(m.stop_requested())}, "
              f"findings={m.finding_count()}, free pages {m.pool.nr_free()}/{m.pool.npages}, "
              f"grace periods {m.rcu.gp_seq()}")
        for i in range(m.nslots):
            c = m.cpus[i]
            who = "gp" if i == m.gp_cpu else "boot" if i == m.boot_cpu else f"cpu{i}"
            wait = wd.describe_wait(int(c["waiting_on"])) if c["waiting_on"] else "-"
            status = CPU_STATUS[int(c["status"])] if 0 <= c["status"] < len(CPU_STATUS) else "?"
            print(f"  {who:>5} pid {int(c['pid']):>7} {status:<8} op {int(c['op']):>3} "
                  f"ops {int(c['heartbeat']):>9} irqs_off {int(c['irqs_disabled'])} waits {wait}")
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
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "clean":
            return cmd_clean(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
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
