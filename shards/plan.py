"""Shard tasks over WebDataset folders: read a shard from one folder, write it to another.

Sources and sinks are small picklable callables, so the same ``ShardTask`` runs in this process, in a
Dask worker process, or on a remote Dask cluster.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from poisonlab.pipelines.accounting import ShardStats, StageCounts
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import Stage
from poisonlab.shards.layout import is_complete, list_shards, remove_temp_files, stats_path, write_sizes
from poisonlab.shards.reader import ReadPolicy, ReadReport, read_shard
from poisonlab.shards.safe_open import open_regular, read_capped
from poisonlab.shards.writer import ShardWriter

MAX_STATS_BYTES = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FolderSource:
    directory: str
    policy: ReadPolicy = ReadPolicy()

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        report = ReadReport(shard_errors=shard_errors)
        yield from read_shard(Path(self.directory), shard, self.policy, report)


@dataclasses.dataclass(frozen=True)
class FolderSink:
    directory: str
    source_name: str | None = None

    def __call__(
        self, shard: str, samples: Iterable[Sample], stages: list[StageCounts], shard_errors: list[str]
    ) -> ShardStats:
        with ShardWriter(Path(self.directory), shard, source=self.source_name) as writer:
            for sample in samples:
                writer.write(sample)
            return writer.close(stages=stages, shard_errors=shard_errors)

    def is_done(self, shard: str) -> bool:
        return is_complete(Path(self.directory), shard)

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
    """One task per input shard; output shards keep their input names."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("input and output folders must differ: shards are never rewritten in place")
    names = list(shards) if shards is not None else list_shards(src)
    if not names:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    return plan_source_tasks(FolderSource(str(src), policy or ReadPolicy()), names, dst, stages, source_name=str(src))


def plan_source_tasks(
    source: Callable[[str, list[str]], Iterator[Sample]],
    shards: Sequence[str],
    dst: Path,
    stages: Sequence[Stage] = (),
    source_name: str | None = None,
) -> list[ShardTask]:
    """One task per shard name, from any source (a folder, a generator, a URL-list part) into ``dst``."""
    sink = FolderSink(str(dst), source_name)
    return [
        ShardTask(shard=n, source=source, stages=tuple(stages), sink=sink, is_done=sink.is_done,
                  load_done=sink.load_done, source_name=source_name)
        for n in shards
    ]


def finalize_folder(dst: Path, results: Iterable[ShardStats]) -> Path:
    """Once every shard is complete: write the dataset-level ``sizes.json``, remove killed writers' temp files."""
    remove_temp_files(Path(dst))
    return write_sizes(Path(dst), ((s.shard, s.written) for s in results))
