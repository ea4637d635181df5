"""The driver: Ray, embedded or a cluster, fed with a campaign's runs and their reproducers."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict

from stress.campaign.plan import CampaignError, RunSpec
from stress.campaign.state import Campaign, Signature, signatures_plot
from stress.campaign.tasks import execute, shrink_report

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's object store lives in /dev/shm too; results are small
INSTALL_HINT = "Ray is not installed: pip install 'mmtorture[campaign]' (or pip install ray)"


# -- the driver ---------------------------------------------------------------------------


def ray_init(address: str | None, local_cpus: int | None = None):
    """Ray, embedded on this machine (on `local_cpus` of its cores, default all) unless an address
    (or RAY_ADDRESS) names a cluster."""
    try:
        import ray
    except ImportError:
        raise CampaignError(INSTALL_HINT) from None
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address is None:
        kwargs["object_store_memory"] = OBJECT_STORE_BYTES
        if local_cpus is not None:
            kwargs["num_cpus"] = local_cpus
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise CampaignError(f"cannot start or reach Ray at {address or 'this machine'}: {e}") from None
    return ray


def run_campaign(
    campaign: Campaign,
    *,
    address: str | None = None,
    local_cpus: int | None = None,
    shrink: bool = True,
    say: Callable[[str], None] | None = None,
    on_result: Callable[[dict, list[Signature]], None] | None = None,
) -> dict:
    """Run what is left of the campaign on Ray; the summary (also in campaign.json).

    A run reserves the cores it keeps busy (RunSpec.cores), and at most as
    many runs are in flight as the cluster has cores for, so a budget in
    seconds is not overshot by a queue of runs nobody waits for.  Without
    `shrink`, signatures get no reproducer (a benchmark's hunt)."""
    ray = ray_init(address, local_cpus)
    say = say or (lambda s: None)
    try:
        total = int(ray.cluster_resources().get("CPU", 1))
        node_max = max(int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n.get("Alive")) or 1
        task = ray.remote(max_retries=1)(execute)
        shrinker = ray.remote(max_retries=1)(shrink_report)
        todo = campaign.pending()
        inflight: dict = {}
        reserved = 0
        try:
            while True:
                while not campaign.out_of_time():
                    spec = next(todo, None)
                    if spec is None:
                        break
                    need = min(spec.cores, node_max)
                    ref = task.options(num_cpus=need).remote(asdict(spec), campaign.directory)
                    inflight[ref] = (need, None)
                    reserved += need
                    if reserved >= total:
                        break
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
                for ref in ready:
                    need, shrunk = inflight.pop(ref)
                    reserved -= need
                    result = ray.get(ref)
                    if shrunk is not None:  # a reproducer came back
                        shrunk.reproducer = result["reproducer"]
                        shrunk.reproducer_text = result.get("text", "")
                        shrunk.reproducer_image = result.get("image")
                        shrunk.reproducer_error = None if shrunk.reproducer else str(result.get("error"))
                        campaign.write_summary()
                        continue
                    new = campaign.record(result)
                    for s in new:
                        say(f"new signature: {s.signature} (run {result['id']})")
                        if s.report and shrink:  # shrunk in the background, as soon as it is first seen
                            spec = RunSpec(**result["spec"])
                            ref = shrinker.options(num_cpus=1).remote(
                                s.report, spec.scheduler, spec.policy_modules, s.signature
                            )
                            inflight[ref] = (1, s)
                            reserved += 1
                    if new:
                        campaign.write_summary()
                    if on_result:
                        on_result(result, new)
        except KeyboardInterrupt:
            campaign.interrupted = True
            for ref in inflight:
                ray.cancel(ref)
            raise
        finally:
            signatures_plot(campaign.write_summary(), os.path.join(campaign.directory, "campaign.png"))
    finally:
        ray.shutdown()
    return campaign.summary()
