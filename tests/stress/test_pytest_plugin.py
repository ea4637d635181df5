"""The pytest11 plugin, exercised through pytester in a subprocess (also under -n 2)."""

from __future__ import annotations

pytest_plugins = ["pytester"]

TESTS = """
import pytest

def test_clean(mmtorture_run):
    r = mmtorture_run("rcu", "rcu", cpus=2, ops=50)
    assert r.findings == []
    assert r.report["scheduler"] == EXPECT_SCHEDULER
    assert r.report["seed"] == 4242

def test_mutant_fails(mmtorture_run):
    r = mmtorture_run("seqcount", "no_retry", cpus=2, ops=200, scheduler="random")
    assert r.findings == [], "expected to fail: the plugin prints how to replay"

@pytest.mark.soak
def test_long(mmtorture_run):
    mmtorture_run("rcu", "rcu", cpus=2, ops=50)
"""


def _make(pytester, scheduler: str):
    pytester.makepyfile(test_runs=TESTS.replace("EXPECT_SCHEDULER", repr(scheduler)))


def test_plugin_fixture_options_failure_section_and_soak(pytester):
    _make(pytester, "pct")
    res = pytester.runpytest_subprocess("--mmtorture-seed", "4242", "--mmtorture-scheduler", "pct", "-rs")
    res.assert_outcomes(passed=1, failed=1, skipped=1)
    out = res.stdout.str()
    assert "mmtorture runs" in out
    assert "replay: mmtorture replay " in out and "seqcount-no_retry-0.json" in out
    assert "soak test: run with --soak" in out


def test_plugin_soak_runs_when_asked(pytester):
    _make(pytester, "free")
    res = pytester.runpytest_subprocess("--mmtorture-seed", "4242", "--soak", "-k", "long or clean")
    res.assert_outcomes(passed=2)


def test_plugin_under_xdist(pytester):
    _make(pytester, "random")
    res = pytester.runpytest_subprocess("-n", "2", "--mmtorture-seed", "4242", "--mmtorture-scheduler", "random")
    res.assert_outcomes(passed=1, failed=1, skipped=1)
    assert "replay: mmtorture replay " in res.stdout.str()
