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

from stress.campaign.command import add_arguments, command, summary_table
from stress.campaign.driver import ray_init, run_campaign
from stress.campaign.plan import CAMPAIGN_SCHEMA, STRATEGIES, CampaignError, Plan, RunSpec, build_plan
from stress.campaign.state import Campaign, Signature, signature, signature_id, signatures_plot
from stress.campaign.tasks import execute, shrink_report

__all__ = [
    "CAMPAIGN_SCHEMA",
    "STRATEGIES",
    "Campaign",
    "CampaignError",
    "Plan",
    "RunSpec",
    "Signature",
    "add_arguments",
    "build_plan",
    "command",
    "execute",
    "ray_init",
    "run_campaign",
    "shrink_report",
    "signature",
    "signature_id",
    "signatures_plot",
    "summary_table",
]
