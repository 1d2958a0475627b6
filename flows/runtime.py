"""Where shard tasks run: a local Dask cluster (default), an existing cluster by address, or in-process.

Every runner calls the same ``run_shard_task`` so the bytes written never depend on the runner, the
number of workers or the order in which shards finish. ``run_job`` is how every command runs a
``ShardJob``: its tasks on the chosen runner, then its ``finalize`` on the results in task order.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

from poisonlab.pipelines.accounting import ShardResult, ShardStats, stats_of
from poisonlab.pipelines.executor import OnDone, ShardTask, run_local_results, run_shard_task
from poisonlab.pipelines.job import JobRunner, ShardJob


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    """How to run shard tasks. ``executor='prefect'`` is the Prefect flow on Dask; ``'local'`` runs here."""

    executor: str = "prefect"
    dask_address: str | None = None
    workers: int | None = None
    progress: bool = True

    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


def check_prefect_environment() -> None:
    """Refuse to start when the ``dataclasses`` backport shadows the standard library (Prefect's server dies)."""
    try:
        distribution("dataclasses")
    except PackageNotFoundError:
        return
    raise RuntimeError(
        "the 'dataclasses' backport (pulled in by img2dataset) is installed and breaks Prefect's server on "
        f"Python {sys.version_info.major}.{sys.version_info.minor}; remove it with: pip uninstall -y dataclasses"
    )


class Progress:
    """A progress bar with samples/s, fed by finished shards."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.enabled = enabled
        self.samples = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="shard", file=sys.stderr, dynamic_ncols=True)

    def update(self, result: ShardResult) -> None:
        skipped = result.skipped
        if not skipped:
            self.samples += result.stats.samples
        if self.bar is not None:
            rate = self.samples / max(1e-9, time.perf_counter() - self.start)
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s" + (" (skipped done shards)" if skipped else ""))
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_task_results(tasks: Sequence[ShardTask], spec: RunnerSpec, label: str = "shards") -> list[ShardResult]:
    """Run shard tasks with the chosen runner; results (stats and small results) come back in task order."""
    runner = RUNNERS.get(spec.executor)
    if runner is None:
        raise ValueError(f"unknown executor {spec.executor!r}; known: {', '.join(sorted(RUNNERS))}")
    progress = Progress(len(tasks), label, spec.progress)
    try:
        return runner(tasks, spec, label, progress.update)
    finally:
        progress.close()


def run_tasks(tasks: Sequence[ShardTask], spec: RunnerSpec, label: str = "shards") -> list[ShardStats]:
    """``run_task_results``, keeping only the stats."""
    return stats_of(run_task_results(tasks, spec, label))


def run_job(job: ShardJob, spec: RunnerSpec, label: str) -> dict[str, Any]:
    """Plan (errors before any work), run every shard task with the chosen runner, finalise."""
    return job.finalize(run_task_results(job.tasks(), spec, label))


def job_runner(spec: RunnerSpec, label: str) -> JobRunner:
    """``run_job`` bound to a runner and a label, for code that takes a ``JobRunner`` (filters, experiments)."""
    return lambda job: run_job(job, spec, label)


def _run_in_process(tasks: Sequence[ShardTask], spec: RunnerSpec, label: str, on_done: OnDone) -> list[ShardResult]:
    return run_local_results(tasks, on_done)


def _run_prefect(tasks: Sequence[ShardTask], spec: RunnerSpec, label: str, on_done: OnDone) -> list[ShardResult]:
    check_prefect_environment()
    from poisonlab.flows.shard_flow import run_shard_flow

    return run_shard_flow(tasks, spec, label, on_done)


RUNNERS: dict[str, Callable[[Sequence[ShardTask], RunnerSpec, str, OnDone], list[ShardResult]]] = {
    "local": _run_in_process, "prefect": _run_prefect,
}


def run_one(task: ShardTask) -> ShardStats:
    return run_shard_task(task).stats
