"""A campaign's matrix: the cells (scenario, policy, strategy), the seeds, the budget, and each
run as the command line hunt would run the same strategy's seed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from stress.hunt import cpus_for, plan, seed_knobs

CAMPAIGN_SCHEMA = "mmtorture-campaign/1"
STRATEGIES = ("mix", "random", "swarm", "pct", "free")


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
        args = ["run", "-s", self.scenario, "-p", self.policy, "--seed", str(self.seed), "--cpus", str(self.run_cpus)]
        for k, v in seed_knobs(self.strategy, self.n, self.ops).items():
            args += ["--" + k.replace("_", "-"), str(v)]
        for m in self.policy_modules:
            args += ["--policy-module", m]
        return args + ["--progress", "off", "--quiet", "--json", report]

    @property
    def scheduler(self) -> str:
        return plan(self.strategy, self.n)[1]

    @property
    def run_cpus(self) -> int:
        return cpus_for(plan(self.strategy, self.n)[0], self.n, self.cpus)

    @property
    def cores(self) -> int:
        """The cores the run keeps busy, what it reserves: a free-running run's CPUs run at once,
        one core each; a controlled run's take turns (one holds the token), one core in all."""
        return self.run_cpus if self.scheduler == "free" else 1


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
