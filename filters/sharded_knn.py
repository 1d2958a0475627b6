"""Memory-bounded neighbour search: every vector's k nearest others through index shards and an exact merge.

The plan (``filters/budget.py``) fixes the codes and the index shards from the sizes and the budget. A
``ShardRunner`` builds the shards and searches them, query block by query block; each result (a block's
top-k in one shard) is merged into the running top-k of those rows (``filters/knn_merge.py``), in whatever
order results arrive: the merge is exact and order-free, so the neighbours are the same in-process
(``SequentialShards``: one shard after another, only one held at a time) and on Dask workers
(``poisonlab.flows.knn_dask``: one shard per worker, all searched at once). Each shard searches ``k + 1``
(``+ 1`` more with partners) so that the query itself and its partner can be dropped after the merge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from poisonlab.filters.budget import CODES, IndexPlan, choose_plan, parse_bytes
from poisonlab.filters.index_shard import IndexShard, ShardSettings, ShardSpec, shard_specs
from poisonlab.filters.knn_merge import drop_excluded, empty_result, merge_topk
from poisonlab.filters.vectors import VectorSource
from poisonlab.pipelines.keyed import keyed_rng

BlockResult = tuple[int, int, np.ndarray, np.ndarray]  # query rows start, end; distances, ids
EXACT_BLOCK = 65_536  # database rows compared at once by the exact fallback and the recall check


class ShardRunner(Protocol):
    """Builds index shards somewhere and yields every (query block, shard) result, in any order."""

    def search(self, source: VectorSource, specs: Sequence[ShardSpec], blocks: Sequence[tuple[int, int]],
               k: int) -> Iterator[BlockResult]: ...


class SequentialShards:
    """In this process: build one shard, search every query block against it, drop it, build the next.
    Peak memory is one shard plus the running result, whatever the number of shards."""

    def search(self, source: VectorSource, specs: Sequence[ShardSpec], blocks: Sequence[tuple[int, int]],
               k: int) -> Iterator[BlockResult]:
        for spec in specs:
            shard = IndexShard(source, spec)
            for start, end in blocks:
                yield (start, end, *shard.search(start, end, k))
            del shard


def query_blocks(n: int, size: int) -> list[tuple[int, int]]:
    """Fixed query blocks: every runner searches the same blocks, so every shard computes the same floats."""
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def plan_for(n: int, dim: int, memory: str | int, codes: str = "auto", pca_dim: int = 0) -> IndexPlan:
    budget = parse_bytes(memory)
    assert budget is not None
    return choose_plan(n, dim, budget, codes, pca_dim)


def merged_neighbours(source: VectorSource, specs: Sequence[ShardSpec], k: int, chunk: int,
                      runner: ShardRunner) -> tuple[np.ndarray, np.ndarray]:
    """Every row's k nearest rows (itself included) over all shards, merged block by block."""
    n = len(source)
    best_d, best_i = empty_result(n, k)
    for start, end, dist, ids in runner.search(source, specs, query_blocks(n, chunk), k):
        best_d[start:end], best_i[start:end] = merge_topk([best_d[start:end], dist], [best_i[start:end], ids], k)
    return best_d, best_i


def exact_rows(source: VectorSource, rows: np.ndarray, k: int,
               partner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest others of a few rows, reading the source block by block (no copy of all vectors)."""
    extra = 1 + (partner is not None)
    queries = source.take(rows)
    best_d, best_i = empty_result(len(rows), k + extra)
    for start in range(0, len(source), EXACT_BLOCK):
        block = source.rows(start, min(len(source), start + EXACT_BLOCK))
        sims = queries @ block.T
        take = min(k + extra, sims.shape[1])
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.take_along_axis(sims, part, axis=1), dtype=np.float32))
        best_d, best_i = merge_topk([best_d, dist.astype(np.float32)], [best_i, part + start], k + extra)
        source.release()
    dist, ids, short = drop_excluded(best_d, best_i, rows, partner, k)
    if short.any():
        raise ValueError(f"{len(source)} vectors cannot each have k={k} neighbours")
    return dist, ids


def sampled_recall(source: VectorSource, ids: np.ndarray, queries: int, seed: int,
                   partner: np.ndarray | None = None) -> float:
    """Recall@k of neighbour lists on a keyed sample of rows (the same sample as the single index's check)."""
    n, k = ids.shape
    rows = np.arange(n) if queries >= n else np.sort(
        keyed_rng(seed, "filters/index", "recall-check").choice(n, size=queries, replace=False))
    _, truth = exact_rows(source, rows, k, partner)
    return float((truth[:, :, None] == ids[rows][:, None, :]).any(axis=2).mean())


def sharded_self_knn(source: VectorSource, k: int, plan: IndexPlan, settings: ShardSettings,
                     partner: np.ndarray | None = None,
                     runner: ShardRunner | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The k nearest *other* rows of every row (not itself, nor ``partner[i]``) through the plan's shards:
    (distances, ids, seconds)."""
    n = len(source)
    extra = 1 + (partner is not None)
    if n <= k + extra - 1:
        raise ValueError(f"{n} vectors cannot each have k={k} neighbours")
    specs = shard_specs(plan, settings)
    started = time.perf_counter()
    best_d, best_i = merged_neighbours(source, specs, k + extra, settings.chunk, runner or SequentialShards())
    dist, ids = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
    short = np.zeros(n, bool)
    for start, end in query_blocks(n, settings.chunk):  # block by block: no (n, k) temporaries
        rows = np.arange(start, end)
        dist[rows], ids[rows], short[rows] = drop_excluded(best_d[rows], best_i[rows], rows, partner, k)
    del best_d, best_i
    if short.any():  # probed lists too short in every shard: exact search for those rows
        rows = np.flatnonzero(short)
        dist[rows], ids[rows] = exact_rows(source, rows, k, partner)
    return dist, ids, {"search": round(time.perf_counter() - started, 3)}


def needs_recall_check(plan: IndexPlan) -> bool:
    return CODES[plan.codes].compressed
