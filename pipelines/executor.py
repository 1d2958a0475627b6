"""Run a chain of stages over shards, one shard at a time, without Prefect or Dask.

``ShardTask`` describes one unit of work; ``run_shard_task`` is the single function every runner calls
(this local executor, the Prefect/Dask flows), so all of them produce the same bytes. It hands back a
``ShardResult``: the shard's stats and, when the sink returns one, a small JSON-able result beside them. The reading and
writing of shards is injected (source and sink callables) so this core layer stays free of any storage
format. The books are checked when the stream ends, which is before a sink commits anything: a shard
that loses a sample is never written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from poisonlab.pipelines.accounting import (
    SOURCE,
    ShardResult,
    ShardStats,
    StageCounts,
    reason_category,
    stats_of,
)
from poisonlab.pipelines.ordered_jobs import lend_cpus
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.pipelines.stage import AccountingError, ShardContext, Stage, chain_stages
from poisonlab.pipelines.visibility import check_paths, paths_of

Source = Callable[[str, list[str]], Iterator[Sample]]
Sink = Callable[[str, Iterable[Sample], list[StageCounts], list[str]], ShardStats | ShardResult]
OnDone = Callable[[ShardResult], Any]


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard's work: where to read, which stages to run, where to write.

    ``source(shard, shard_errors)`` yields every sample of the shard (problems with the shard as a
    whole go to ``shard_errors``); ``sink(shard, samples, counts, shard_errors)`` consumes the stream
    and commits the shard only once it is exhausted. A sink (and ``load_done``) returns the shard's
    ``ShardStats``, or a ``ShardResult`` when it has a small result to hand back beside them.
    """

    shard: str
    source: Source
    stages: Sequence[Stage]
    sink: Sink
    is_done: Callable[[str], bool] | None = None
    load_done: Callable[[str], ShardStats | ShardResult] | None = None
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


def _as_result(value: ShardStats | ShardResult, skipped: bool) -> ShardResult:
    if isinstance(value, ShardResult):
        return dataclasses.replace(value, skipped=skipped)
    return ShardResult(value, skipped)


def run_shard_task(task: ShardTask) -> ShardResult:
    """Run one shard; its result says whether it was skipped because it was already complete.

    The task checks here, where it runs, that it can write its output (before asking whether the shard
    is done) and read its input (before any work; a finished shard needs no input): a worker on another
    machine or in another working directory fails loudly instead of writing an empty shard.
    """
    check_paths(paths_of(task.sink, shard=task.shard), task.shard)
    if task.is_done is not None and task.is_done(task.shard):
        done = task.load_done(task.shard) if task.load_done else ShardStats(shard=task.shard)
        return _as_result(done, True)
    check_paths(paths_of(task.source, *task.stages, shard=task.shard), task.shard)
    start = time.perf_counter()
    shard_errors: list[str] = []
    stages = [prepared(s) for s in task.stages]
    ctx = ShardContext(shard=task.shard, source=task.source_name)
    source_counts = StageCounts(stage=SOURCE)
    source = _counted_source(task.source(task.shard, shard_errors), source_counts)
    stream, stage_counts = chain_stages(stages, source, ctx)
    counts = [source_counts, *stage_counts]
    result = _as_result(task.sink(task.shard, _checked(stream, counts, task.shard), counts, shard_errors), False)
    result.stats.seconds = time.perf_counter() - start
    problems = result.stats.accounting_problems()
    if problems:  # the sink dropped or invented rows; the stream itself was already checked
        raise AccountingError(f"shard {task.shard}: " + "; ".join(problems))
    return result


def run_local_results(tasks: Iterable[ShardTask], on_done: OnDone | None = None) -> list[ShardResult]:
    """Run tasks one after another in this process (tests, notebooks, the reference for the flows)."""
    results = []
    with lend_cpus():  # one task at a time: its codecs and model may use every core
        for task in tasks:
            result = run_shard_task(task)
            if on_done is not None:
                on_done(result)
            results.append(result)
    return results


def run_local(tasks: Iterable[ShardTask], on_done: OnDone | None = None) -> list[ShardStats]:
    """``run_local_results``, keeping only the stats (for callers that need nothing else)."""
    return stats_of(run_local_results(tasks, on_done))
