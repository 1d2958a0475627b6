"""Run a chain of stages over shards, one shard at a time, without Prefect or Dask.

``ShardTask`` describes one unit of work; ``run_shard_task`` is the single function every runner calls
(this local executor, the Prefect/Dask flows), so all of them produce the same bytes. The reading and
writing of shards is injected (``ShardIO``) so this core layer stays free of any storage format.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from poisonlab.pipelines.accounting import ShardStats, StageCounts
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import ShardContext, Stage, chain_stages


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard's work: where to read, which stages to run, where to write."""

    shard: str
    source: Callable[[str, list[str]], Iterator[Sample]]
    stages: Sequence[Stage]
    sink: Callable[[str, Iterable[Sample], list[StageCounts], list[str]], ShardStats]
    is_done: Callable[[str], bool] | None = None
    load_done: Callable[[str], ShardStats] | None = None
    source_name: str | None = None


_PREPARED: dict[bytes, Stage] = {}


def prepared(stage: Stage) -> Stage:
    """The set-up instance of an identical stage in this process: ``setup()`` runs once per worker."""
    token = stage.cache_token()
    cached = _PREPARED.get(token)
    if cached is None:
        stage.setup()
        _PREPARED[token] = cached = stage
    return cached


def run_shard_task(task: ShardTask) -> tuple[ShardStats, bool]:
    """Run one shard; returns its stats and whether it was skipped because it was already complete."""
    if task.is_done is not None and task.is_done(task.shard):
        stats = task.load_done(task.shard) if task.load_done else ShardStats(shard=task.shard)
        return stats, True
    start = time.perf_counter()
    shard_errors: list[str] = []
    stages = [prepared(s) for s in task.stages]
    ctx = ShardContext(shard=task.shard, source=task.source_name)
    stream, counts = chain_stages(stages, task.source(task.shard, shard_errors), ctx)
    stats = task.sink(task.shard, stream, counts, shard_errors)
    stats.seconds = time.perf_counter() - start
    unbalanced = [c.stage for c in counts if not c.balanced]
    if unbalanced:
        raise RuntimeError(f"accounting does not add up on shard {task.shard} for stages {unbalanced}")
    return stats, False


def run_local(tasks: Iterable[ShardTask], on_done: Callable[[ShardStats, bool], Any] | None = None) -> list[ShardStats]:
    """Run tasks one after another in this process (tests, notebooks, the reference for the flows)."""
    results = []
    for task in tasks:
        stats, skipped = run_shard_task(task)
        if on_done is not None:
            on_done(stats, skipped)
        results.append(stats)
    return results

