"""pytest plugin (entry point pytest11): runs as fixtures, xdist-safe names, a soak marker.

- `mmtorture_run(scenario, policy, **knobs)` runs in the test and returns a
  RunResult; its JSON report goes to the test's tmp_path.  `--mmtorture-seed`
  and `--mmtorture-scheduler` set the defaults of every run a test makes.
- When a test that made runs fails, the report path and the replay command
  of each run are printed in its failure section.
- Segment names carry the xdist worker id and test-run uid, so
  `pytest -n auto` never collides.
- Tests marked `soak` run only with `--soak` or `-m soak`.
"""

from __future__ import annotations

import pytest

_RUNS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mmtorture")
    group.addoption("--soak", action="store_true", default=False, help="also run tests marked soak (long torture runs)")
    group.addoption(
        "--mmtorture-seed", default=None, metavar="N", help="seed of every mmtorture_run that does not give one"
    )
    group.addoption(
        "--mmtorture-scheduler",
        default=None,
        metavar="NAME",
        help="scheduler (free, random, pct) of every mmtorture_run that does not give one",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long-running torture; runs only with --soak or -m soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--soak") or "soak" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def mmtorture_run(request: pytest.FixtureRequest, tmp_path):
    """Run a scenario/policy in this test; returns stress.runner.RunResult (with .report_path)."""
    from stress.runner import run

    runs = request.node.stash.setdefault(_RUNS, [])
    seed = request.config.getoption("--mmtorture-seed")
    scheduler = request.config.getoption("--mmtorture-scheduler")

    def _run(scenario: str, policy: str | None = None, **knobs):
        knobs.setdefault("progress", "off")
        if seed is not None:
            knobs.setdefault("seed", seed)
        if scheduler is not None and "schedule" not in knobs:
            knobs.setdefault("scheduler", scheduler)
        path = tmp_path / f"{scenario}-{policy or 'default'}-{len(runs)}.json"
        result = run(scenario, policy, json_path=str(path), **knobs)
        result.report_path = str(path)
        runs.append((f"{scenario}/{policy or 'default'}", str(path), "schedule" in result.report))
        return result

    return _run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    runs = item.stash.get(_RUNS, None)
    if not runs or rep.when != "call" or not rep.failed:
        return
    lines = []
    for label, path, replayable in runs:
        lines.append(f"{label}: report {path}")
        if replayable:
            lines.append(f"    replay: mmtorture replay {path}")
            lines.append(f"    shrink: mmtorture shrink {path}")
    rep.sections.append(("mmtorture runs", "\n".join(lines)))
