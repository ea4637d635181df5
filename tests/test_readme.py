"""What the README says must be true: every command block runs, with the outcome it shows.

Blocks are taken from README.md in order.  A ```python block whose first
line is `# file: NAME` is written to NAME in a scratch directory; a
```console block is a series of `$ command` lines, each run there (by a
shell, with the venv's mmtorture on PATH), followed by the output it
claims: every claimed line must appear in the output, in order, with
`...` standing for anything.  The ```sh block of make targets is checked
with `make -n`.  The benchmark figures must be what docs/figures.py renders
from docs/bench/*.json, and every mutant must be in the scenario tables
with the checks it names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from policies import scenarios

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", README, re.S | re.M)


def matches(claimed: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in claimed.split("..."))
    return re.fullmatch(pattern, actual.rstrip()) is not None


def in_order(claimed: list[str], output: str) -> str | None:
    """None if every claimed line appears in the output in order, else the first that does not."""
    lines = output.splitlines()
    i = 0
    for want in claimed:
        while i < len(lines) and not matches(want, lines[i]):
            i += 1
        if i == len(lines):
            return want
        i += 1
    return None


def console_steps(block: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def test_every_command_block_gives_the_outcome_it_shows(tmp_path):
    env = dict(
        os.environ,
        MMTORTURE_PROGRESS="off",
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    env.pop("MMTORTURE_POLICY_MODULE", None)
    ran = 0
    for lang, body in BLOCKS:
        if lang == "python" and body.startswith("# file: "):
            name = body.splitlines()[0].removeprefix("# file: ").strip()
            (tmp_path / name).write_text(body)
        if lang != "console":
            continue
        for command, claimed in console_steps(body):
            p = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            out = p.stdout + p.stderr
            missing = in_order(claimed, out)
            assert missing is None, f"$ {command}\nclaimed line not found: {missing!r}\noutput:\n{out}"
            shows_error = any("error:" in c for c in claimed)
            assert p.returncode in ((2,) if shows_error else (0, 1)), f"$ {command}: exit {p.returncode}\n{out}"
            ran += 1
    assert ran >= 15


def test_the_make_targets_it_names_exist():
    (block,) = [b for lang, b in BLOCKS if lang == "sh"]
    for line in block.splitlines():
        target = line.split()[1]
        p = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (target, p.stderr)


def test_the_benchmark_figures_are_rendered_from_the_json():
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "docs", "figures.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "<!-- figures:vma -->\n| policy |" in README


@pytest.mark.parametrize("scenario", sorted(scenarios()))
def test_every_mutant_is_in_the_readme_with_its_checks(scenario):
    sc = scenarios()[scenario]
    written = re.sub(r"<!-- figures:(\w+) -->.*?<!-- /figures:\1 -->", "", README, flags=re.S).splitlines()
    rows = [line for line in written if line.startswith(f"| {scenario} |") or line.startswith(f"| {scenario}/")]
    for p in sc.mutants():
        named = [r for r in rows if f" {p.name}:" in r or f"| {scenario}/{p.name} |" in r]
        if scenario == "vma_lookup" and not named:
            named = [line for line in written if f"vma_lookup/{p.name}" in line or f"| {p.twin}/{p.name} |" in line]
        assert named, f"{scenario}/{p.name} is not in the README's tables"
        for check in p.expect:
            assert any(check in r for r in named), f"{scenario}/{p.name}: {check} not said in the README"
