"""`mmtorture campaign`: its options, its live line, and what it prints and draws at the end."""

from __future__ import annotations

import os
import signal
import sys
import time

from stress.campaign.driver import run_campaign
from stress.campaign.plan import STRATEGIES, CampaignError, build_plan
from stress.campaign.state import Campaign
from stress.report import EXIT_FINDINGS, EXIT_OK


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


SHOWN_REPRODUCERS = 10


def reproducers(doc: dict, limit: int = SHOWN_REPRODUCERS) -> str:
    """Each signature's shrunk race as shrink drew it (a correct policy's first), to paste into a
    mail; the rest are in campaign.json."""
    out = []
    drawn = [s for s in doc["signatures"] if s.get("reproducer_text")]
    for s in drawn[:limit]:
        out.append(f"== {s['signature']}")
        out += [line for line in s["reproducer_text"].rstrip().splitlines()]
        if s.get("reproducer_image"):
            out.append(f"drawn in {s['reproducer_image']}")
        out.append("")
    if len(drawn) > limit:
        out.append(f"{len(drawn) - limit} more reproducers in campaign.json")
    return "\n".join(out).rstrip()


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
        "--local-cpus",
        type=int,
        default=None,
        metavar="N",
        help="the cores an embedded Ray schedules runs on (default: all; pin with taskset to confine it)",
    )
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
    for name in ("seeds", "runs", "cpus", "ops", "local_cpus"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CampaignError(f"--{name.replace('_', '-')} must be a positive integer, not {v}")
    if args.duration is not None and not args.duration > 0:
        raise CampaignError(f"--duration must be a positive number of seconds, not {args.duration}")
    if args.local_cpus is not None and (args.address or os.environ.get("RAY_ADDRESS")):
        raise CampaignError("--local-cpus is for an embedded Ray: a cluster's nodes say their own cores")
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
            local_cpus=args.local_cpus,
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
    if text := reproducers(doc):
        print(text)
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
    """One run done: tqdm counts it and its rate (and with a budget in runs, the ETA); the line adds
    the signatures, and with a budget in seconds when the campaign ends."""
    bar.update(1)
    post = {"signatures": len(campaign.signatures)}
    if campaign.plan.duration is not None:
        left = max(0.0, campaign.plan.duration - campaign.elapsed)
        post["ends in"] = bar.format_interval(left)
    bar.set_postfix(post, refresh=False)
