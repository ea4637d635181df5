"""A campaign's state on disk and in memory: the runs that finished and the signatures they found."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from stress.campaign.plan import CAMPAIGN_SCHEMA, CampaignError, Plan, RunSpec
from stress.report import write_json

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
    reproducer_text: str = ""  # the race drawn in columns, one per CPU, as shrink prints it
    reproducer_image: str | None = None  # the same drawing as a PNG
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


def found_over_time(path: str, series: list[tuple[str, list[float]]], end: float, ylabel: str, title: str) -> bool:
    """A step chart of how many things were found by each second (one line per series, each a
    list of the seconds at which one was first found); False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, found in series:
        times = sorted(found)
        ax.step([0.0, *times, end], [0, *range(1, len(times) + 1), len(times)], where="post", label=label)
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("seconds")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def signatures_plot(doc: dict, path: str) -> bool:
    """campaign.png: signatures found against time, a correct policy's apart."""
    series = [("in mutants", [s["first_seen_s"] for s in doc["signatures"] if s["mutant"]])]
    correct = [s["first_seen_s"] for s in doc["signatures"] if not s["mutant"]]
    if correct:
        series.append(("in correct policies", correct))
    title = f"{doc['runs']} runs, {len(doc['signatures'])} signatures"
    return found_over_time(path, series, doc["seconds"], "signatures", title)
