"""Materialise a decision: cleaned shards (kept samples byte-identical), an exclusion table, and optionally
the excluded samples as shards of their own for inspection.

Cleaning is an ordinary stage chain over the input shards: ``ExcludeKeys`` is a ``FilterStage`` that drops
the excluded keys with their reason, so each output sidecar still holds one row per input sample and the
per-shard accounting closes. It loads the exclusion table once per worker in ``setup()``; the table's
digest is part of the stage's identity, so a worker never reuses the keys of another decision.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq
from pydantic import Field

from poisonlab.filters.store import file_digest
from poisonlab.pipelines.accounting import ShardStats, StageCounts
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.pipelines.stage import FilterStage, ShardContext
from poisonlab.pipelines.visibility import TaskPaths
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.layout import atomic_write_text, is_complete
from poisonlab.shards.plan import FolderSink, load_stats, plan_folder_tasks
from poisonlab.shards.writer import ShardWriter

EXCLUSIONS_FILE = "exclusions.parquet"  # in the cleaned folder's run subfolder: ``OUT/_run/exclusions.parquet``
CLEAN_REPORT = "clean.json"  # the books of a clean, with the fingerprint of the folder cleaned (beside attack.json: JSON, so ``OUT/*.parquet`` stays the sidecars)
STAGE_NAME = "sanitize"


class ExcludeKeysParams(Params):
    exclusions: str = Field(..., description="an exclusions.parquet (key, reason, ...) written by `poisonlab clean`")


class ExcludeKeys(FilterStage):
    """Drop the samples an exclusion table lists, each with the reason recorded there."""

    name = STAGE_NAME

    def __init__(self, params: ExcludeKeysParams) -> None:
        path = Path(params.exclusions)
        if not path.exists():
            raise FileNotFoundError(f"exclusion table {path} does not exist")
        self.exclusions = str(path.resolve())
        self.digest = file_digest(path)  # part of the cache token: another table is another stage
        self._reasons: dict[str, str] | None = None

    def setup(self) -> None:
        table = pq.read_table(self.exclusions, columns=["key", "reason"])
        self._reasons = dict(zip(table.column("key").to_pylist(), table.column("reason").to_pylist(), strict=True))

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(read=(self.exclusions,))

    def reject(self, sample: Sample, ctx: ShardContext) -> str | None:
        if getattr(self, "_reasons", None) is None:  # unpickled on a worker without the executor's setup()
            self.setup()
        return self._reasons.get(sample.key)  # type: ignore[union-attr]


get_registry("stage").register("exclude_keys", ExcludeKeysParams)(ExcludeKeys)


@dataclasses.dataclass(frozen=True)
class SplitSink:
    """Write the cleaned shard as usual, and the samples this stage excluded into a second folder.

    Excluded samples go to the inspection shard as live samples, with the reason under
    ``meta["poisonlab"]["sanitize"]``; the cleaned shard and its accounting are exactly what a plain
    ``FolderSink`` writes.
    """

    directory: str
    excluded_directory: str
    source_name: str | None = None

    def __call__(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
                 shard_errors: list[str]) -> ShardStats:
        with ShardWriter(Path(self.excluded_directory), shard, source=self.source_name) as side:
            def tee(stream: Iterable[Sample]) -> Iterable[Sample]:
                for sample in stream:
                    if sample.status == Status.DROPPED.value and (sample.reason or "").startswith(f"{STAGE_NAME}:"):
                        side.write(_for_inspection(sample))
                    yield sample

            stats = FolderSink(self.directory, self.source_name)(shard, tee(samples), stages, shard_errors)
            side.close(stages=None, shard_errors=shard_errors)
        return stats

    def is_done(self, shard: str) -> bool:
        return is_complete(Path(self.directory), shard) and is_complete(Path(self.excluded_directory), shard)

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(write=(self.directory, self.excluded_directory))

    def load_done(self, shard: str) -> ShardStats:
        return load_stats(Path(self.directory), shard)


def _for_inspection(sample: Sample) -> Sample:
    provenance = sample.meta.get("poisonlab")
    record = dict(provenance) if isinstance(provenance, dict) else ({"upstream": provenance} if provenance else {})
    record["sanitize"] = (sample.reason or "").removeprefix(f"{STAGE_NAME}: ")
    return dataclasses.replace(sample.with_meta(poisonlab=record), status=Status.OK.value, reason=None)


def plan_clean_tasks(src: Path, out: Path, exclusions: Path, excluded_out: Path | None = None) -> list[ShardTask]:
    """One task per input shard: the exclusion stage, written to ``out`` (and ``excluded_out``)."""
    stage = ExcludeKeys(ExcludeKeysParams(exclusions=str(exclusions)))
    tasks = plan_folder_tasks(Path(src), Path(out), [stage], read_policy_for(Path(src)))
    if excluded_out is None:
        return tasks
    if Path(excluded_out).resolve() in (Path(src).resolve(), Path(out).resolve()):
        raise ValueError("the folder for excluded samples must differ from the input and output folders")
    Path(excluded_out).mkdir(parents=True, exist_ok=True)  # by the driver (see ``plan_source_tasks``)
    sink = SplitSink(str(out), str(excluded_out), str(src))
    return [dataclasses.replace(t, sink=sink, is_done=sink.is_done, load_done=sink.load_done) for t in tasks]


def write_clean_report(out: Path, report: dict) -> Path:
    path = Path(out) / CLEAN_REPORT
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return path
