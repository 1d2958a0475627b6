"""``run_job`` on the Prefect flow over Dask: each shard's small result comes back beside its stats, in task order."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.pipelines.accounting import ShardResult, StageCounts, stats_of
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.plan import FolderSink, plan_folder_tasks

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Dask workers need not import this test module


@dataclasses.dataclass(frozen=True)
class CountingSink:
    directory: str

    def __call__(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
                 errors: list[str]) -> ShardResult:
        stats = FolderSink(self.directory)(shard, samples, stages, errors)
        return ShardResult(stats, result={"shard": shard, "live": stats.written})


@dataclasses.dataclass
class CountingJob:
    src: Path
    dst: Path

    def tasks(self) -> list[ShardTask]:
        sink = CountingSink(str(self.dst))
        return [dataclasses.replace(t, sink=sink) for t in plan_folder_tasks(self.src, self.dst, [])]

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        return {"results": [r.result for r in results], "stats": [s.to_dict() for s in stats_of(results)]}


def test_prefect_carries_small_results_like_the_local_runner(prefect_harness, tiny_shards: Path, tmp_path: Path) -> None:
    local = run_job(CountingJob(tiny_shards, tmp_path / "local"), RunnerSpec(executor="local", progress=False), "t")
    flow = run_job(CountingJob(tiny_shards, tmp_path / "flow"), RunnerSpec(executor="prefect", workers=2, progress=False),
                   "jobs-test")
    assert flow == local
    assert [r["shard"] for r in flow["results"]] == ["00000", "00001", "00002", "00003"]
