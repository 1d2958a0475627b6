"""One index shard: the codes of a contiguous row range, searched one query block at a time.

A shard reads only its own rows to build (in chunks), and returns, for a block of queries, its own k
nearest rows as global row ids with Euclidean distances, sorted by (distance, row id). Compressed codes
(an IVF over a PCA projection, SQ8 or PQ entries, L2 metric: translation-invariant, so PCA's centring does
not change rankings) propose ``refine x k`` candidates that are re-ranked on exact vectors: the shard's
own copy when the plan keeps one, else the rows read back from the vector source. Every random choice
(training sample, k-means seed) is keyed by the seed and the shard's row range, so a shard built on any
worker is the same shard.
"""

from __future__ import annotations

import dataclasses
import math

import faiss
import numpy as np

from poisonlab.filters.budget import CODES, IndexPlan, auto_nlist_for, auto_nprobe_for
from poisonlab.filters.knn_merge import MISSING, merge_topk
from poisonlab.filters.threads import one_thread
from poisonlab.filters.vectors import VectorSource
from poisonlab.pipelines.keyed import keyed_rng

REFINE_BLOCK = 512  # queries re-ranked per FAISS call: bounds the candidate pages mapped at once
PQ_TRAIN = 256 * 16  # PQ codebooks (256 centroids each) want a few thousand training points
PQ_ITERATIONS = 15  # k-means iterations per sub-quantiser (faiss's 25 gain little on refined search)


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """How every shard of one index searches (the same for all shards, from ``IndexParams``)."""

    nprobe: int = 0  # 0: 8 lists up to 200k rows in all, 4 above
    refine: float = 2.0  # candidates re-ranked exactly, as a multiple of k (times the codes' factor)
    train_per_list: int = 32
    seed: int = 0
    chunk: int = 32_768  # rows added per call, and queries per search block


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What one worker needs to build its shard: rows start..end-1 under the plan's codes."""

    start: int
    end: int
    plan: IndexPlan
    settings: ShardSettings = ShardSettings()

    @property
    def rows(self) -> int:
        return self.end - self.start

    @property
    def total(self) -> int:
        """Rows of the whole index (all shards)."""
        return self.plan.shards[-1][1]


def shard_specs(plan: IndexPlan, settings: ShardSettings) -> list[ShardSpec]:
    """One spec per index shard of the plan, in row order."""
    return [ShardSpec(s, e, plan, settings) for s, e in plan.shards]


def _factory(spec: ShardSpec, nlist: int) -> str:
    plan = spec.plan
    proj = f"PCA{plan.code_dim}," if plan.code_dim != plan.dim else ""
    return proj + CODES[plan.codes].factory(nlist, plan.pq_m)


def _quiet_training(index: faiss.Index, seed: int) -> None:
    """Small keyed training samples are intended: no k-means warnings, a keyed seed."""
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.seed = seed
    inner = faiss.downcast_index(ivf)
    if hasattr(inner, "pq"):
        inner.pq.cp.min_points_per_centroid = 1
        inner.pq.cp.seed = seed
        inner.pq.cp.niter = PQ_ITERATIONS
        inner.do_polysemous_training = False  # Hamming-ordered codes: minutes of annealing, unused here


class IndexShard:
    """The codes of rows ``spec.start..spec.end-1`` of ``source``; searched by query row range."""

    def __init__(self, source: VectorSource, spec: ShardSpec) -> None:
        self.source, self.spec = source, spec
        self.compressed = CODES[spec.plan.codes].compressed
        self.exact: np.ndarray | None = None
        with one_thread():  # the same shard on any worker (filters/threads.py)
            self.index = self._build_compressed() if self.compressed else self._build_flat()
        if self.compressed and spec.plan.refine == "memory":
            self.exact = source.rows(spec.start, spec.end)
        source.release()

    def _add(self, index: faiss.Index) -> None:
        for s in range(self.spec.start, self.spec.end, self.spec.settings.chunk):
            index.add(self.source.rows(s, min(self.spec.end, s + self.spec.settings.chunk)))
            self.source.release()  # a memory map would otherwise keep the whole range resident

    def _build_flat(self) -> faiss.Index:
        index = faiss.IndexFlatIP(self.spec.plan.dim)
        self._add(index)
        return index

    def _build_compressed(self) -> faiss.Index:
        spec = self.spec
        nlist = auto_nlist_for(spec.rows, spec.total)
        index = faiss.index_factory(spec.plan.dim, _factory(spec, nlist), faiss.METRIC_L2)
        seed = int(keyed_rng(spec.settings.seed, "filters/index_shard", f"kmeans-{spec.start}-{spec.end}").integers(2**31))
        _quiet_training(index, seed)
        wanted = max(nlist * spec.settings.train_per_list, PQ_TRAIN if spec.plan.codes == "pq" else 0)
        rng = keyed_rng(spec.settings.seed, "filters/index_shard", f"train-{spec.start}-{spec.end}")
        sample = np.arange(spec.rows) if wanted >= spec.rows else np.sort(rng.choice(spec.rows, wanted, replace=False))
        index.train(np.ascontiguousarray(self.source.take(sample + spec.start)))
        self._add(index)
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(nlist, spec.settings.nprobe or auto_nprobe_for(spec.total))
        return index

    def search(self, start: int, end: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This shard's k nearest rows to queries start..end-1: (distances, global row ids), each (m, k),
        sorted by (distance, id); padded with (inf, -1) when the shard holds fewer than k rows."""
        with one_thread():
            return self._search(start, end, k)

    def _search(self, start: int, end: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self.source.rows(start, end)
        take = min(k, self.spec.rows)
        if self.compressed:
            wanted = math.ceil(self.spec.settings.refine * CODES[self.spec.plan.codes].refine_factor * take)
            _, local = self.index.search(queries, min(self.spec.rows, max(take, wanted)))
            dist, local = self._refine(queries, local, take)
        else:
            sims, local = self.index.search(queries, take)
            dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims, dtype=np.float32)).astype(np.float32)
        ids = np.where(local >= 0, local + self.spec.start, MISSING)
        self.source.release()
        return merge_topk([dist], [ids], k)

    def _refine(self, queries: np.ndarray, local: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of the candidates, read in place (the shard's own copy, or the source's rows:
        in memory or memory-mapped) by FAISS; the k nearest, as shard-local ids."""
        base, offset = (self.exact, 0) if self.exact is not None else (self.source.array(), self.spec.start)
        cand = np.ascontiguousarray(np.where(local >= 0, local + offset, MISSING), dtype=np.int64)
        m, width = cand.shape
        sims, ids = np.empty((m, k), np.float32), np.empty((m, k), np.int64)
        for s in range(0, m, REFINE_BLOCK):  # a memory map's pages read for a sub-block are unmapped after it
            e = min(m, s + REFINE_BLOCK)
            faiss.knn_inner_products_by_idx(
                faiss.swig_ptr(queries[s:e]), faiss.swig_ptr(base), faiss.swig_ptr(cand[s:e]), self.spec.plan.dim,
                e - s, len(base), width, k, faiss.swig_ptr(sims[s:e]), faiss.swig_ptr(ids[s:e]), width)
            self.source.release()
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims, dtype=np.float32)).astype(np.float32)
        found = ids >= 0
        return merge_topk([np.where(found, dist, np.inf)], [np.where(found, ids - offset, MISSING)], k)
