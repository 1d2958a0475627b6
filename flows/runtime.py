"""Where shard tasks run: in-process, on a local Dask cluster, or on an existing cluster by address.

The default executor, ``auto``, runs small inputs in-process: a cluster and a Prefect API server cost seconds
to start, more than a few shards take to run. It chooses the Prefect flow on Dask when a cluster is asked for
(``--dask-address``, ``--workers``) or when the input has at least ``AUTO_CLUSTER_MIN_SHARDS`` shards on a
machine with more than one core (``choose_executor``). ``local`` and ``prefect`` force either. Every runner calls the same ``run_shard_task`` so the bytes written never depend on the runner, the
number of workers or the order in which shards finish. ``run_job`` is how every command runs a
``ShardJob``: its tasks on the chosen runner, then its ``finalize`` on the results in task order.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

from poisonlab.pipelines.accounting import ShardResult, ShardStats, stats_of
from poisonlab.pipelines.executor import OnDone, ShardTask, run_local_results, run_shard_task
from poisonlab.pipelines.job import JobRunner, ShardJob


class Executor(str, enum.Enum):
    """The executors a command accepts (``--executor``); ``auto`` resolves to ``local`` or ``prefect``."""

    auto = "auto"
    local = "local"
    prefect = "prefect"


AUTO_CLUSTER_MIN_SHARDS = 8
"""``auto`` starts a local cluster from this many shards on: below it, start-up costs more than it saves."""


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    """How to run shard tasks: ``executor`` (``auto``, ``local`` in-process, ``prefect`` the Prefect flow on
    Dask), where (``dask_address``, ``workers``), and what to print (``progress`` bars, Dask/Prefect INFO logs
    when ``verbose``, only errors when ``quiet``)."""

    executor: str = Executor.auto.value
    dask_address: str | None = None
    workers: int | None = None
    progress: bool = True
    verbose: bool = False
    quiet: bool = False

    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)


def choose_executor(spec: RunnerSpec, shards: int) -> str:
    """The executor that runs ``shards`` tasks: ``spec.executor`` unless it is ``auto``, which picks the
    cluster only where one was asked for or where the work spreads over enough shards and cores."""
    executor = Executor(spec.executor)
    if executor is not Executor.auto:
        return executor.value
    if spec.dask_address or spec.workers is not None:
        return Executor.prefect.value
    if shards >= AUTO_CLUSTER_MIN_SHARDS and spec.worker_count() > 1:
        return Executor.prefect.value
    return Executor.local.value


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
    if spec.executor not in EXECUTORS:
        raise ValueError(f"unknown executor {spec.executor!r}; known: {', '.join(EXECUTORS)}")
    runner = RUNNERS[choose_executor(spec, len(tasks))]
    progress = Progress(len(tasks), label, spec.progress and not spec.quiet)
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
    from poisonlab.flows import logs
    from poisonlab.flows.shard_flow import run_shard_flow

    logs.configure(verbose=spec.verbose, quiet=spec.quiet)
    return run_shard_flow(tasks, spec, label, on_done)


RUNNERS: dict[str, Callable[[Sequence[ShardTask], RunnerSpec, str, OnDone], list[ShardResult]]] = {
    Executor.local.value: _run_in_process, Executor.prefect.value: _run_prefect,
}
EXECUTORS: tuple[str, ...] = tuple(e.value for e in Executor)


def run_one(task: ShardTask) -> ShardStats:
    return run_shard_task(task).stats
