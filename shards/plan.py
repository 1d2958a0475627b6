"""Shard tasks over WebDataset folders: read a shard from one folder, write it to another.

Sources and sinks are small picklable callables, so the same ``ShardTask`` runs in this process, in a
Dask worker process, or on a remote Dask cluster. ``FolderJob`` is the ``ShardJob`` of a plain stage
chain (or a generator) into a folder; a folder is read with its modality's policy (``dataset.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from poisonlab.pipelines.accounting import ShardResult, ShardStats, StageCounts, shard_totals, stats_of
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import Stage
from poisonlab.pipelines.visibility import TaskPaths
from poisonlab.shards import markers
from poisonlab.shards.dataset import (
    DEFAULT_MODALITY,
    copy_dataset_record,
    read_policy_for,
    write_dataset_record,
    written_extensions,
)
from poisonlab.shards.layout import list_shards, remove_temp_files, stats_path, tar_path, write_sizes
from poisonlab.shards.markers import MAX_STATS_BYTES, ShardMarker
from poisonlab.shards.reader import ReadPolicy, ReadReport, read_shard
from poisonlab.shards.safe_open import open_regular, read_capped
from poisonlab.shards.writer import ShardWriter


@dataclasses.dataclass(frozen=True)
class FolderSource:
    directory: str
    policy: ReadPolicy = ReadPolicy()

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        report = ReadReport(shard_errors=shard_errors)
        yield from read_shard(Path(self.directory), shard, self.policy, report)

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(read=(self.directory, str(tar_path(Path(self.directory), shard))))


@dataclasses.dataclass(frozen=True)
class FolderSink:
    directory: str
    source_name: str | None = None
    marker: ShardMarker | None = None  # what a finished shard must prove to be skipped (shards.markers)

    def __call__(
        self, shard: str, samples: Iterable[Sample], stages: list[StageCounts], shard_errors: list[str]
    ) -> ShardStats:
        expected = self.marker.expected(shard) if self.marker is not None else None
        with ShardWriter(Path(self.directory), shard, source=self.source_name, marker=expected) as writer:
            for sample in samples:
                writer.write(sample)
            return writer.close(stages=stages, shard_errors=shard_errors)

    def is_done(self, shard: str) -> bool:
        return markers.is_done(Path(self.directory), shard, self.marker)

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(write=(self.directory,))

    def load_done(self, shard: str) -> ShardStats:
        return load_stats(Path(self.directory), shard)


def load_stats(directory: Path, shard: str) -> ShardStats:
    """A completed shard's stats (the completion marker), never read through a link or from a FIFO."""
    path = stats_path(directory, shard)
    with open_regular(path) as fh:
        return ShardStats.from_dict(json.loads(read_capped(fh, MAX_STATS_BYTES, path.name)))


def plan_folder_tasks(
    src: Path, dst: Path, stages: Sequence[Stage], policy: ReadPolicy | None = None, shards: Sequence[str] | None = None
) -> list[ShardTask]:
    """One task per input shard; output shards keep their input names (no resume check: see ``FolderJob``)."""
    job = folder_job(src, dst, stages, policy, shards)
    return plan_source_tasks(job.source, job.shards, job.dst, job.stages, job.source_name)


def folder_job(
    src: Path, dst: Path, stages: Sequence[Stage], policy: ReadPolicy | None = None,
    shards: Sequence[str] | None = None, overwrite: bool = False,
) -> FolderJob:
    """A stage chain over the shards of ``src`` into ``dst``, read with ``src``'s modality unless ``policy``."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("input and output folders must differ: shards are never rewritten in place")
    names = list(shards) if shards is not None else list_shards(src)
    if not names:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    source = FolderSource(os.path.abspath(src), policy or read_policy_for(src))  # the same folder on every worker
    return FolderJob(source, tuple(names), dst, tuple(stages), source_name=str(src), derived_from=src,
                     overwrite=overwrite)


def plan_source_tasks(
    source: Callable[[str, list[str]], Iterator[Sample]],
    shards: Sequence[str],
    dst: Path,
    stages: Sequence[Stage] = (),
    source_name: str | None = None,
) -> list[ShardTask]:
    """One task per shard name, from any source (a folder, a generator, a URL-list part) into ``dst``.

    ``dst`` is created here, in the driver: a task only writes into a folder that already exists, so a
    worker that does not share the driver's file system fails instead of creating its own copy.
    """
    Path(dst).mkdir(parents=True, exist_ok=True)
    sink = FolderSink(os.path.abspath(dst), source_name, ShardMarker.for_task(source, stages))
    return [
        ShardTask(shard=n, source=source, stages=tuple(stages), sink=sink, is_done=sink.is_done,
                  load_done=sink.load_done, source_name=source_name)
        for n in shards
    ]


def finalize_folder(dst: Path, results: Iterable[ShardStats]) -> Path:
    """Once every shard is complete: write the dataset-level ``sizes.json``, remove killed writers' temp files."""
    remove_temp_files(Path(dst))
    return write_sizes(Path(dst), ((s.shard, s.written) for s in results))


@dataclasses.dataclass(frozen=True)
class FolderJob:
    """Shards from any source into ``dst``; ``finalize`` writes ``sizes.json`` and ``dataset.json``.

    Output derived from a folder keeps that folder's dataset record (``derived_from``); a new dataset
    (a generator) is recorded as ``modality`` (images by default) with the payload extensions its sidecars show.
    """

    source: Callable[[str, list[str]], Iterator[Sample]]
    shards: tuple[str, ...]
    dst: Path
    stages: tuple[Stage, ...] = ()
    source_name: str | None = None
    derived_from: Path | None = None
    overwrite: bool = False  # redo shards another configuration finished, instead of refusing them
    modality: str = DEFAULT_MODALITY  # what a new dataset (a generator) is recorded as

    def tasks(self) -> list[ShardTask]:
        """The shard tasks, after refusing (or, with ``overwrite``, removing) another configuration's shards."""
        tasks = plan_source_tasks(self.source, self.shards, self.dst, self.stages, self.source_name)
        markers.check_resume(tasks, self.overwrite)
        return tasks

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        stats = stats_of(results)
        finalize_folder(self.dst, stats)
        if self.derived_from is not None:
            copy_dataset_record(self.derived_from, self.dst)
        else:
            write_dataset_record(self.dst, self.modality, written_extensions(self.dst, self.shards))
        return shard_totals(stats)
