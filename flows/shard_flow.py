"""The Prefect flow that runs one task per shard on a ``DaskTaskRunner``.

The flow is thin on purpose: plan, submit, gather. It talks to one Prefect API server per run
(``prefect_api``), and a local cluster is started quietly: no dashboard, its HTTP endpoint on a free port
(no port-in-use warnings when two commands run at once). Shard tasks are captured in a closure rather than
passed as flow parameters, so Prefect never tries to serialise stages into its API database.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Sequence

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner

from poisonlab.flows import plan_store, prefect_api
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.pipelines.accounting import ShardResult
from poisonlab.pipelines.executor import OnDone, ShardTask, run_shard_task


@task(name="shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def shard_task(shard_task: ShardTask) -> dict:
    """Stats, skipped flag and the task's small result, as plain JSON-able data for the trip back."""
    return run_shard_task(shard_task).to_dict()


def dask_runner(spec: RunnerSpec) -> DaskTaskRunner:
    """An existing cluster by address, or a local cluster of worker processes sized to the machine."""
    if spec.dask_address:
        return DaskTaskRunner(address=spec.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": spec.worker_count(),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
        }
    )


@functools.lru_cache(maxsize=8)
def dashboard_link(address: str) -> str | None:
    """The dashboard of an existing (persistent) cluster, or None when it has none or cannot be asked."""
    from distributed import Client

    try:
        with Client(address, timeout=10) as client:
            return client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None
    except (OSError, TimeoutError):
        return None


def _flow_name(label: str) -> str:
    return "poisonlab-" + re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-")


@flow(name="poisonlab-shards", validate_parameters=False)
def shards_flow(plan_id: str) -> list[dict]:
    tasks, on_done = plan_store.get(plan_id)
    futures = [shard_task.with_options(name=f"shard-{t.shard}").submit(t) for t in tasks]
    position = {id(f): i for i, f in enumerate(futures)}
    results: list[dict] = [{} for _ in futures]
    for fut in as_completed(futures):
        result = fut.result()
        results[position[id(fut)]] = result
        on_done(ShardResult.from_dict(result))
    return results


def run_shard_flow(tasks: Sequence[ShardTask], spec: RunnerSpec, label: str, on_done: OnDone) -> list[ShardResult]:
    plan_id = uuid.uuid4().hex
    plan_store.put(plan_id, (tasks, on_done))
    try:
        if spec.dask_address and not spec.quiet:
            prefect_api.announce("Dask dashboard", dashboard_link(spec.dask_address))
        configured = shards_flow.with_options(name=_flow_name(label), task_runner=dask_runner(spec))
        with prefect_api.api_server(quiet=spec.quiet):
            return [ShardResult.from_dict(d) for d in configured(plan_id)]
    finally:
        plan_store.discard(plan_id)
