"""Index shards held by Dask workers: one ``distributed`` actor per shard, pinned to one worker.

The pure part (codes, shard boundaries, search of one shard, the exact merge) lives in
``poisonlab.filters``; this module only places shards on workers and moves query ranges and results.
Each actor builds its shard from the vector source (a ``.npy`` every worker memory-maps: an in-memory
array is written once to ``scratch``), then answers one query block at a time; the driver merges the
per-shard top-k as they arrive. With more shards than workers, shards are built in waves of one shard per
worker, so no worker ever holds two. Results do not depend on the number of workers: shard boundaries
come from the plan, and the merge is exact and order-free.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from poisonlab.filters.index_shard import IndexShard, ShardSpec
from poisonlab.filters.sharded_knn import BlockResult
from poisonlab.filters.vectors import ArraySource, NpySource, VectorSource, save_source
from poisonlab.flows.runtime import RunnerSpec

AHEAD = 2  # query blocks in flight per shard: keeps workers busy while the driver merges


class ShardActor:
    """Lives on one worker and holds at most one index shard."""

    def __init__(self) -> None:
        self.shard: IndexShard | None = None

    def build(self, source: VectorSource, spec: ShardSpec) -> int:
        self.shard = IndexShard(source, spec)
        return spec.rows

    def search(self, start: int, end: int, k: int) -> tuple[Any, Any]:
        if self.shard is None:
            raise RuntimeError("search before build")
        return self.shard.search(start, end, k)

    def release(self) -> None:
        self.shard = None
        gc.collect()


class DaskShards:
    """A ``ShardRunner`` on a ``distributed.Client``: one shard per worker, all searched at once. Vectors
    held in memory are written for the workers under ``scratch`` (a folder every worker sees; a temporary
    folder of this machine by default) and removed afterwards."""

    def __init__(self, client: Any, scratch: Path | None = None) -> None:
        self.client = client
        self.scratch = Path(scratch).resolve() if scratch is not None else None

    def _shareable(self, source: VectorSource, stack: contextlib.ExitStack) -> VectorSource:
        """A source workers can open: an in-memory array is written to a ``.npy`` under ``scratch``."""
        if isinstance(source, NpySource):
            return source
        if not isinstance(source, ArraySource):
            return source  # any other picklable source is sent as it is
        if self.scratch is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="poisonlab-index-")))
        else:
            folder = self.scratch / f".index-{uuid.uuid4().hex}"
            folder.mkdir(parents=True)
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
        return save_source(source.x, folder / "vectors.npy")

    def _actors(self, count: int) -> list[Any]:
        workers = sorted(self.client.scheduler_info()["workers"])[:count]
        futures = [self.client.submit(ShardActor, actor=True, workers=[w], allow_other_workers=False, pure=False)
                   for w in workers]
        return [f.result() for f in futures]

    def workers(self) -> int:
        return len(self.client.scheduler_info()["workers"])

    def search(self, source: VectorSource, specs: Sequence[ShardSpec], blocks: Sequence[tuple[int, int]],
               k: int) -> Iterator[BlockResult]:
        with contextlib.ExitStack() as stack:
            shared = self._shareable(source, stack)
            width = max(1, self.workers())
            for wave in range(0, len(specs), width):
                yield from self._wave(shared, specs[wave:wave + width], blocks, k)

    def _wave(self, source: VectorSource, specs: Sequence[ShardSpec], blocks: Sequence[tuple[int, int]],
              k: int) -> Iterator[BlockResult]:
        actors = self._actors(len(specs))
        try:
            for built in [a.build(source, spec) for a, spec in zip(actors, specs, strict=True)]:
                built.result()
            pending = [[a.search(s, e, k) for a in actors] for s, e in blocks[:AHEAD]]
            for i, (start, end) in enumerate(blocks):
                if i + AHEAD < len(blocks):
                    s, e = blocks[i + AHEAD]
                    pending.append([a.search(s, e, k) for a in actors])
                for future in pending.pop(0):
                    yield (start, end, *future.result())
        finally:
            for released in [a.release() for a in actors]:
                released.result()


@contextlib.contextmanager
def shard_runner(spec: RunnerSpec, scratch: Path | None = None) -> Iterator[DaskShards]:
    """A Dask shard runner for a runner spec: the cluster at ``spec.dask_address``, or a local one with
    ``spec.workers`` single-threaded worker processes (one per core by default)."""
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if spec.dask_address:
            client = stack.enter_context(Client(spec.dask_address, timeout=60))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=spec.worker_count(), threads_per_worker=1,
                                                       processes=True, dashboard_address=None,
                                                       scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}))
            client = stack.enter_context(Client(cluster))
        yield DaskShards(client, scratch)
