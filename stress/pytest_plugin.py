"""pytest plugin (entry point pytest11): xdist-safe runs, a `soak` marker, a run fixture.

Segment names carry PYTEST_XDIST_WORKER, so `pytest -n auto` never collides.
Tests marked `soak` run only with `--soak` or `-m soak`.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mmtorture")
    group.addoption("--soak", action="store_true", default=False,
                    help="also run tests marked soak (long torture runs)")


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
def mmtorture_run(tmp_path):
    """Run a scenario/policy in this test; returns stress.runner.RunResult."""
    from stress.runner import run

    def _run(scenario: str, policy: str | None = None, **knobs):
        knobs.setdefault("progress", "off")
        return run(scenario, policy, json_path=str(tmp_path / f"{scenario}-{policy}.json"), **knobs)

    return _run
