"""Communication-directed preemption: a profile of every access, channels, and their schedules."""

from __future__ import annotations

from policies import get_scenario
from stress import pmc
from stress.program import from_json
from stress.report import evidence
from stress.runner import run

PROGRAM = [[["replace_sync"], ["replace_sync"]], [["read"], ["read"]]]


def _channels(policy: str):
    sc = get_scenario("rcu")
    ops = sc.operations(sc.policy(policy))
    r = run(
        "rcu", policy, cpus=2, program=PROGRAM, schedule=pmc.turns(PROGRAM), strict=False, profile=True, progress="off"
    )
    assert r.findings == [] and r.profile is not None
    kinds = [[k for k, _ in c] for c in from_json(PROGRAM, ops)]
    return r, pmc.channels(r.profile, kinds)


def test_the_profile_holds_every_operation_and_its_accesses():
    r, chans = _channels("rcu")
    for cpu, prog in enumerate(PROGRAM):
        ops = r.profile[cpu][: len(prog)]
        assert len(ops) == len(prog) and all(len(recs) for _, recs in ops)
        assert [clock for clock, _ in ops] == sorted(clock for clock, _ in ops)
    assert chans, "a reader and a writer of one object communicate"


def _every_schedule(policy: str):
    r, chans = _channels(policy)
    for pair in chans.values():
        for (cpu, op, wcpu, wop), words in pair.items():
            for w, accs in words.items():
                for acc in accs:
                    ch = pmc.Channel(cpu, op, acc, wcpu, wop, (w >> 48, w & ((1 << 48) - 1)))
                    for back in (True, False):
                        yield run(
                            "rcu",
                            policy,
                            cpus=2,
                            program=PROGRAM,
                            schedule=pmc.schedule(PROGRAM, r.profile, ch, back),
                            strict=False,
                            progress="off",
                        )


def test_a_channel_schedule_catches_a_grace_period_that_does_not_wait_and_the_twin_survives_them_all():
    assert any(r.first_check == "rcu.pipe-age" for r in _every_schedule("no_wait_gp"))
    witness = get_scenario("rcu").policy("no_wait_gp").witness
    seen = 0
    for r in _every_schedule("rcu"):
        assert r.findings == [] and r.exit_code == 0
        seen += evidence(r.report).get(witness, 0)
    assert seen > 0, f"no channel schedule of the correct rcu went through {witness}"


def test_a_pmc_try_that_finds_another_check_lets_the_others_run():
    """A try that trips a check the mutant does not name is kept and the next channel is tried with
    the profile of the first run (a try's run has none)."""
    from stress.hunt import _pmc_seed

    results = [_pmc_seed("rcu", "no_wait_gp", seed, 2, (), ("no.such-check",)) for seed in range(12)]
    assert all(r.exit_code in (0, 1) for r in results)
    assert any(r.findings and r.profile is None for r in results)
