"""The job protocol: tasks -> one ShardResult per shard (stats and a small result) -> finalize, on any runner."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.pipelines.accounting import ShardResult, ShardStats, StageCounts, shard_totals, stats_of
from poisonlab.pipelines.executor import ShardTask, run_shard_task
from poisonlab.pipelines.job import ShardJob, run_job_local
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.plan import FolderSink, load_stats, plan_folder_tasks


@dataclasses.dataclass(frozen=True)
class KeysSink:
    """A folder sink that also hands back the shard's first key (a per-shard result, as a client would)."""

    directory: str

    def __call__(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
                 errors: list[str]) -> ShardResult:
        seen: list[str] = []

        def remember(stream: Iterable[Sample]) -> Iterable[Sample]:
            for s in stream:
                seen.append(s.key)
                yield s

        stats = FolderSink(self.directory)(shard, remember(samples), stages, errors)
        return ShardResult(stats, result={"first": seen[0], "rows": len(seen)})

    def is_done(self, shard: str) -> bool:
        return FolderSink(self.directory).is_done(shard)

    def load_done(self, shard: str) -> ShardResult:
        stats = load_stats(Path(self.directory), shard)
        return ShardResult(stats, result={"rows": stats.samples})


@dataclasses.dataclass
class FirstKeysJob:
    src: Path
    dst: Path

    def tasks(self) -> list[ShardTask]:
        sink = KeysSink(str(self.dst))
        return [dataclasses.replace(t, sink=sink, is_done=sink.is_done, load_done=sink.load_done)
                for t in plan_folder_tasks(self.src, self.dst, [])]

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        return {"results": [r.result for r in results], "skipped": [r.skipped for r in results],
                **shard_totals(stats_of(results))}


def test_a_job_gets_every_shards_small_result_in_task_order(tiny_shards: Path, tmp_path: Path) -> None:
    job = FirstKeysJob(tiny_shards, tmp_path / "out")
    assert isinstance(job, ShardJob)
    summary = run_job_local(job)
    assert summary["shards"] == 4 and summary["samples"] == 240
    assert [r["rows"] for r in summary["results"]] == [60] * 4
    assert [r["first"] for r in summary["results"]] == [f"0000{s}0000" for s in range(4)]  # img2dataset keys
    again = run_job(FirstKeysJob(tiny_shards, tmp_path / "out"), RunnerSpec(executor="local", progress=False), "t")
    assert again["skipped"] == [True] * 4 and again["results"] == [{"rows": 60}] * 4  # load_done's result


def test_a_sink_returning_stats_alone_gives_no_result(tiny_shards: Path, tmp_path: Path) -> None:
    result = run_shard_task(plan_folder_tasks(tiny_shards, tmp_path, [])[0])
    assert isinstance(result.stats, ShardStats) and result.result is None and not result.skipped


def test_results_survive_the_trip_as_json() -> None:
    stats = ShardStats(shard="00003", samples=2, written=1)
    stats.by_status.update({"ok": 1, "error": 1})
    back = ShardResult.from_dict(ShardResult(stats, True, {"loss": 0.5, "keys": ["a"]}).to_dict())
    assert back.stats.to_dict() == stats.to_dict() and back.skipped and back.result == {"loss": 0.5, "keys": ["a"]}
