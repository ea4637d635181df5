"""What runs in a Ray worker: one run as its own process, a signature's reproducer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from stress.campaign.plan import RunSpec
from stress.detection import REPRODUCE_S
from stress.report import EXIT_FINDINGS, EXIT_OK

RUN_TIMEOUT_S = 600.0  # a run's own watchdog ends a hang long before this
SITE_FRAMES = 3


# -- one run, in a Ray worker ---------------------------------------------------------


def execute(spec: dict, directory: str) -> dict:
    """Run one spec as its own process (Ray workers are threaded: fork+exec, never fork alone),
    after cleaning the segments a killed run left on this node; once more if it died by a
    signal (a SIGKILL, the OOM killer), counted once.  A small result: the report stays on disk."""
    from shm import clean_dead_segments

    s = RunSpec(**spec)
    reports = os.path.join(directory, "reports")
    os.makedirs(reports, exist_ok=True)
    report = os.path.join(reports, f"{s.id}.json")
    cmd = [sys.executable, "-m", "stress", *s.args(report)]
    t0 = time.monotonic()
    attempts, rc = 0, -1
    cleaned: list[str] = []
    while attempts < 2:
        attempts += 1
        cleaned += clean_dead_segments()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
        except BaseException:  # cancelled, interrupted or timed out: the run goes with it
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        rc = proc.returncode
        if rc >= 0:
            break
    cleaned += clean_dead_segments()
    out = {"id": s.id, "spec": spec, "exit": rc, "attempts": attempts, "seconds": round(time.monotonic() - t0, 3)}
    out["cleaned"] = cleaned  # segments dead runs left on this node (a killed attempt's among them)
    out["findings"] = []
    if rc in (EXIT_OK, EXIT_FINDINGS) and os.path.exists(report):
        with open(report) as f:
            doc = json.load(f)
        out["run_id"] = doc.get("run_id")
        out["findings"] = [
            {"check": x["check"], "op": x.get("op"), "site": x.get("site", [])[:SITE_FRAMES], "message": x["message"]}
            for x in doc.get("findings", [])
        ]
        if not out["findings"]:
            os.unlink(report)  # a clean run's report is its line in runs.jsonl
        else:
            out["report"] = report
    else:
        out["error"] = (err or "").strip().splitlines()[-1:] if rc else []
    return out


def shrink_report(report: str, scheduler: str, policy_modules: Sequence[str] = (), title: str = "") -> dict:
    """A signature's reproducer, made in the background: the run's report shrunk (`mmtorture
    shrink`), or for a free-running run made replayable first (`mmtorture reproduce`, which
    shrinks too).  Its path, what the command printed (the race drawn in columns, one per CPU)
    and the drawing as an image beside it; or the error."""
    base = report.removesuffix(".json")
    out = base + (".reproduced.json" if scheduler == "free" else ".shrunk.json")
    cmd = [sys.executable, "-m", "stress"]
    if scheduler == "free":
        cmd += ["reproduce", report, "--json", out, "--seconds", str(REPRODUCE_S), "--quiet"]
    else:
        cmd += ["shrink", report, "--json", out, "--quiet"]
    for m in policy_modules:
        cmd += ["--policy-module", m]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"reproducer": None, "error": f"no reproducer within {RUN_TIMEOUT_S:.0f} s"}
    if r.returncode != EXIT_FINDINGS or not os.path.exists(out):
        return {"reproducer": None, "error": (r.stderr or r.stdout).strip().splitlines()[-1:]}
    from stress.race import plot

    image = out.removesuffix(".json") + ".png"
    try:
        with open(out) as f:
            drawn = plot(json.load(f), image, title=title)
    except Exception:  # noqa: BLE001 - the image is a courtesy: the reproducer stands without it
        drawn = False
    return {"reproducer": out, "text": r.stdout, "image": image if drawn else None}
