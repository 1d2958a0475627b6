"""Where shard tasks run: a local Dask cluster (default), an existing cluster by address, or in-process.

Every runner calls the same ``run_shard_task`` so the bytes written never depend on the runner, the
number of workers or the order in which shards finish.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution

from poisonlab.pipelines.accounting import ShardStats
from poisonlab.pipelines.executor import ShardTask, run_local, run_shard_task


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

    def update(self, stats: ShardStats, skipped: bool) -> None:
        if not skipped:
            self.samples += stats.samples
        if self.bar is not None:
            rate = self.samples / max(1e-9, time.perf_counter() - self.start)
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s" + (" (skipped done shards)" if skipped else ""))
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tasks(tasks: Sequence[ShardTask], spec: RunnerSpec, label: str = "shards") -> list[ShardStats]:
    """Run shard tasks with the chosen runner; results come back in task order."""
    runner = RUNNERS.get(spec.executor)
    if runner is None:
        raise ValueError(f"unknown executor {spec.executor!r}; known: {', '.join(sorted(RUNNERS))}")
    progress = Progress(len(tasks), label, spec.progress)
    try:
        return runner(tasks, spec, label, progress.update)
    finally:
        progress.close()


def _run_in_process(
    tasks: Sequence[ShardTask], spec: RunnerSpec, label: str, on_done: Callable[[ShardStats, bool], None]
) -> list[ShardStats]:
    return run_local(tasks, on_done)


def _run_prefect(
    tasks: Sequence[ShardTask], spec: RunnerSpec, label: str, on_done: Callable[[ShardStats, bool], None]
) -> list[ShardStats]:
    check_prefect_environment()
    from poisonlab.flows.shard_flow import run_shard_flow

    return run_shard_flow(tasks, spec, label, on_done)


RUNNERS: dict[str, Callable[..., list[ShardStats]]] = {"local": _run_in_process, "prefect": _run_prefect}


def run_one(task: ShardTask) -> ShardStats:
    return run_shard_task(task)[0]
