"""Run a chain of stages over shards, one shard at a time, without Prefect or Dask.

``ShardTask`` describes one unit of work; ``run_shard_task`` is the single function every runner calls
(this local executor, the Prefect/Dask flows), so all of them produce the same bytes. The reading and
writing of shards is injected (source and sink callables) so this core layer stays free of any storage
format. The books are checked when the stream ends, which is before a sink commits anything: a shard
that loses a sample is never written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from poisonlab.pipelines.accounting import SOURCE, ShardStats, StageCounts, reason_category
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.pipelines.stage import AccountingError, ShardContext, Stage, chain_stages

Source = Callable[[str, list[str]], Iterator[Sample]]
Sink = Callable[[str, Iterable[Sample], list[StageCounts], list[str]], ShardStats]


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard's work: where to read, which stages to run, where to write.

    ``source(shard, shard_errors)`` yields every sample of the shard (problems with the shard as a
    whole go to ``shard_errors``); ``sink(shard, samples, counts, shard_errors)`` consumes the stream
    and commits the shard only once it is exhausted.
    """

    shard: str
    source: Source
    stages: Sequence[Stage]
    sink: Sink
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


def _counted_source(samples: Iterator[Sample], counts: StageCounts) -> Iterator[Sample]:
    for s in samples:
        if not isinstance(s, Sample):
            raise AccountingError(f"the source yielded {type(s).__name__}, not a Sample")
        counts.inputs += 1
        if s.is_live:
            counts.kept += 1
        else:
            if s.status == Status.DROPPED.value:
                counts.dropped += 1
            else:
                counts.errored += 1
            counts.reasons[reason_category(s.reason or s.status)] += 1
        yield s


def _checked(stream: Iterator[Sample], counts: list[StageCounts], shard: str) -> Iterator[Sample]:
    """Pass the stream through, then raise before the sink commits if the books do not close."""
    out = 0
    for s in stream:
        out += 1
        yield s
    expected = counts[0].inputs + sum(c.added for c in counts[1:])
    unbalanced = [c.stage for c in counts if not c.balanced]
    if unbalanced or out != expected:
        raise AccountingError(
            f"accounting does not add up on shard {shard}: {expected} samples read or added, {out} came out"
            + (f"; unbalanced stages {unbalanced}" if unbalanced else "")
        )


def run_shard_task(task: ShardTask) -> tuple[ShardStats, bool]:
    """Run one shard; returns its stats and whether it was skipped because it was already complete."""
    if task.is_done is not None and task.is_done(task.shard):
        stats = task.load_done(task.shard) if task.load_done else ShardStats(shard=task.shard)
        return stats, True
    start = time.perf_counter()
    shard_errors: list[str] = []
    stages = [prepared(s) for s in task.stages]
    ctx = ShardContext(shard=task.shard, source=task.source_name)
    source_counts = StageCounts(stage=SOURCE)
    source = _counted_source(task.source(task.shard, shard_errors), source_counts)
    stream, stage_counts = chain_stages(stages, source, ctx)
    counts = [source_counts, *stage_counts]
    stats = task.sink(task.shard, _checked(stream, counts, task.shard), counts, shard_errors)
    stats.seconds = time.perf_counter() - start
    problems = stats.accounting_problems()
    if problems:  # the sink dropped or invented rows; the stream itself was already checked
        raise AccountingError(f"shard {task.shard}: " + "; ".join(problems))
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
