"""FAISS indexes for the global neighbour search: every vector's k nearest others, and near-duplicate pairs.

Vectors are L2-normalised embeddings; distances returned are Euclidean (``sqrt(2 - 2 cos)``), the
distance Huang et al.'s detectors use. The index is chosen by size or by parameter:

* ``exact`` — brute force (``IndexFlatIP``), on the GPU when faiss-gpu sees one: the reference.
* ``ivf`` — the default above ``exact_max`` vectors: a PCA projection (``pca_dim``), an inverted file
  over it (k-means with ``nlist`` lists, 8-bit scalar codes), ``nprobe`` lists per query, and an exact
  re-ranking of the ``refine x k`` best candidates in the full space. Because every query is also a
  database vector, each vector's ``nprobe`` lists are computed once and reused for adding and searching
  (a self-join), which halves the coarse-quantiser work. Projection never lengthens a distance, so the
  same structure also finds every near-duplicate pair within a radius (range search), up to the
  lists it probes.
* ``hnsw`` — a graph index on the full vectors, for when an IVF's training is unwanted.

With ``memory`` (a per-worker budget, e.g. ``4GiB``) ``kind`` is not used: ``budget_knn`` chooses codes that
fit it and splits the index into shards when they do not (``budget``, ``index_shard``, ``sharded_knn``).

Every random choice (training samples, k-means seeds) comes from keyed randomness and ``seed``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Literal

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned, range_search_preassigned, search_preassigned
from pydantic import Field, field_validator

from poisonlab.filters.budget import parse_bytes
from poisonlab.filters.index_shard import ShardSettings
from poisonlab.filters.knn_merge import drop_excluded
from poisonlab.filters.sharded_knn import ShardRunner, needs_recall_check, plan_for, sharded_self_knn
from poisonlab.filters.sharded_knn import sampled_recall as source_recall
from poisonlab.filters.vectors import ArraySource, VectorSource, release_pages, take_rows
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.pipelines.registry import Params

REFINE_QUERIES = 2_048  # queries whose candidates are gathered at once for exact re-ranking (~35 MB at k=16)
SHARD_BLOCK = 8_192  # queries per block under a memory budget: bounds what each shard reads and returns per call


class IndexParams(Params):
    """How neighbours are found; ``auto`` is exact up to ``exact_max`` vectors, IVF above."""

    kind: Literal["auto", "exact", "ivf", "hnsw"] = Field("auto", description="auto, exact, ivf or hnsw")
    exact_max: int = Field(50_000, ge=1, description="auto: brute force up to this many vectors")
    pca_dim: int = Field(64, ge=0, description="ivf: dimensions of the projection the lists are built on (0: none)")
    nlist: int = Field(0, ge=0, description="ivf: inverted lists (0: about sqrt(4 n), a power of two)")
    nprobe: int = Field(0, ge=0, description="ivf: lists searched per query (0: 8 up to 200k vectors, 4 above, "
                        "where scanning the lists dominates)")
    code: Literal["sq8", "flat"] = Field("sq8", description="ivf: how list entries are stored")
    refine: float = Field(2.0, ge=1.0, description="ivf: candidates re-ranked exactly, as a multiple of k")
    train_per_list: int = Field(32, ge=4, description="ivf: k-means training points per list")
    hnsw_m: int = Field(32, ge=4, description="hnsw: graph degree")
    ef_construction: int = Field(64, ge=8)
    ef_search: int = Field(128, ge=8)
    gpu: bool = Field(True, description="use faiss-gpu for exact search when a GPU is visible")
    gpu_exact_max: int = Field(5_000_000, ge=1, description="auto with a GPU: brute force up to this many vectors")
    seed: int = 0
    chunk: int = Field(32_768, ge=256, description="queries per search call (bounds temporary memory)")
    check_queries: int = Field(100, ge=0, description="approximate kinds: queries checked by brute force to "
                               "estimate recall@k, reported with the scores (0: no check)")
    memory: str | None = Field(None, description="memory budget of one worker's index (e.g. 4GiB): codes chosen to "
                               "fit it, and index shards when they do not (kind is then ignored; see filters/budget.py)")
    codes: Literal["auto", "flat", "sq8", "pq"] = Field("auto", description="with memory: flat, sq8 or pq codes "
                                                        "(auto: the best that fits one worker)")

    @field_validator("memory")
    @classmethod
    def _memory_is_a_size(cls, value: str | None) -> str | None:
        parse_bytes(value)  # refused at validation, before any work
        return value


@dataclasses.dataclass(frozen=True)
class KnnResult:
    """For each vector, its k nearest other vectors: Euclidean distances (ascending) and row ids."""

    dist: np.ndarray  # (n, k) float32
    ids: np.ndarray  # (n, k) int64
    kind: str
    recall_estimate: float | None = None  # approximate kinds: recall@k on a keyed sample of queries
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # build, search, recall_check
    plan: dict | None = None  # with a memory budget: codes, index shards, memory per shard


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # pragma: no cover - very old builds
        return 0


def resolve_kind(n: int, params: IndexParams) -> str:
    if params.kind != "auto":
        return params.kind
    if params.gpu and gpu_count() > 0 and n <= params.gpu_exact_max:
        return "exact"  # brute force on a GPU is fast up to millions of vectors
    return "exact" if n <= params.exact_max else "ivf"


def auto_nprobe(n: int) -> int:
    return 8 if n <= 200_000 else 4


def auto_nlist(n: int, nprobe: int = 4) -> int:
    """Balance the coarse assignment (n x nlist) against list scanning (n x nprobe x n / nlist)."""
    target = math.sqrt(max(1, nprobe * n))
    nlist = 2 ** round(math.log2(max(16.0, target)))
    return int(min(nlist, max(16, n // 39)))


def ip_to_distance(sims: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * sims, dtype=np.float32)).astype(np.float32)


def _check(x: np.ndarray) -> np.ndarray:
    if x.ndim != 2 or x.dtype != np.float32:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _top_inner_products(queries: np.ndarray, x: np.ndarray, k: int, block: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of a few queries over all of ``x`` by blocked matrix products (no index copy)."""
    k = min(k, len(x))
    sims_parts, ids_parts = [], []
    for start in range(0, len(x), block):
        sims = queries @ x[start:start + block].T
        release_pages(x)
        take = min(k, sims.shape[1])
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        sims_parts.append(np.take_along_axis(sims, part, axis=1))
        ids_parts.append(part + start)
    sims, ids = np.hstack(sims_parts), np.hstack(ids_parts)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _brute_force(x: np.ndarray, rows: np.ndarray, k: int, partner: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    extra = 1 + (partner is not None)
    out_ids, out_sims = np.empty((len(rows), k), np.int64), np.empty((len(rows), k), np.float32)
    for start in range(0, len(rows), 1024):
        chunk = rows[start:start + 1024]
        sims, found = _top_inner_products(take_rows(x, chunk), x, k + extra)
        sims, ids, short = drop_excluded(sims, found.astype(np.int64, copy=False), chunk, partner, k)
        if short.any():
            raise ValueError(f"{len(x)} vectors cannot each have k={k} neighbours")
        out_ids[start:start + len(chunk)], out_sims[start:start + len(chunk)] = ids, sims
    return out_ids, out_sims


def budget_knn(source: VectorSource, k: int, params: IndexParams, partner: np.ndarray | None = None,
               runner: ShardRunner | None = None) -> KnnResult:
    """``self_knn`` under ``params.memory``: codes chosen to fit one worker, index shards searched by
    ``runner`` (in this process, one after another, by default) and merged exactly."""
    plan = plan_for(len(source), source.dim, params.memory or 0, params.codes, params.pca_dim)
    settings = ShardSettings(params.nprobe, params.refine, params.train_per_list, params.seed,
                             min(params.chunk, SHARD_BLOCK))
    dist, ids, seconds = sharded_self_knn(source, k, plan, settings, partner, runner)
    estimate = None
    if needs_recall_check(plan) and params.check_queries > 0:
        started = time.perf_counter()
        estimate = source_recall(source, ids, params.check_queries, params.seed, partner)
        seconds["recall_check"] = round(time.perf_counter() - started, 3)
    return KnnResult(dist=dist, ids=ids, kind=plan.label, recall_estimate=estimate, seconds=seconds,
                     plan=plan.describe())


def self_knn(x: np.ndarray, k: int, params: IndexParams | None = None,
             partner: np.ndarray | None = None, runner: ShardRunner | None = None) -> KnnResult:
    """The k nearest *other* vectors of every vector (not itself, nor ``partner[i]`` when given).
    With ``params.memory``, through index shards that each fit it (``budget_knn``)."""
    params = params or IndexParams()
    x = _check(x)
    if params.memory is not None:
        return budget_knn(ArraySource(x), k, params, partner, runner)
    n = len(x)
    dist = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    searched = _Searched(x, k, params, partner)
    for rows, kept_sims, kept_ids in searched.blocks():
        ids[rows] = kept_ids
        dist[rows] = ip_to_distance(kept_sims)
    estimate = searched.recall(ids)
    return KnnResult(dist=dist, ids=ids, kind=searched.kind, recall_estimate=estimate, seconds=searched.seconds)


def self_kth_distance(x: np.ndarray, k: int, params: IndexParams | None = None,
                      partner: np.ndarray | None = None) -> KnnResult:
    """Only the distance to each vector's k-th nearest other vector: ``self_knn(...).dist[:, k - 1:]``, the
    same floats, without the (n, k) tables (at a million vectors and k = 16 they are 0.19 GiB); the ids are
    kept for the recall check's sample of rows only. ``ids`` of the result is empty."""
    params = params or IndexParams()
    x = _check(x)
    n = len(x)
    kth = np.empty((n, 1), np.float32)
    searched = _Searched(x, k, params, partner)
    sample = searched.recall_rows()
    sample_ids = np.empty((len(sample), k), np.int64)
    for rows, kept_sims, kept_ids in searched.blocks():
        kth[rows, 0] = ip_to_distance(kept_sims[:, k - 1])
        lo, hi = np.searchsorted(sample, rows[0]), np.searchsorted(sample, rows[-1], side="right")
        sample_ids[lo:hi] = kept_ids[sample[lo:hi] - rows[0]]
    estimate = searched.recall(sample_ids, sampled=True)
    return KnnResult(dist=kth, ids=np.empty((n, 0), np.int64), kind=searched.kind, recall_estimate=estimate,
                     seconds=searched.seconds)


class _Searched:
    """One search of every vector's k nearest others by the kind ``params`` resolve to, block by block
    (rows, similarities, ids), and its recall check: what ``self_knn`` and ``self_kth_distance`` share."""

    def __init__(self, x: np.ndarray, k: int, params: IndexParams, partner: np.ndarray | None) -> None:
        n = len(x)
        if n <= k + (partner is not None):
            raise ValueError(f"{n} vectors cannot each have k={k} neighbours")
        self.x, self.k, self.params, self.partner = x, k, params, partner
        self.kind = resolve_kind(n, params)
        self.seconds: dict[str, float] = {}

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        x, k, partner = self.x, self.k, self.partner
        search = {"exact": _exact_search, "ivf": _ivf_search, "hnsw": _hnsw_search}[self.kind]
        started = time.perf_counter()
        for start, cand_ids, cand_sims in search(x, min(len(x), k + 1 + (partner is not None)), self.params,
                                                 self.seconds):
            rows = np.arange(start, start + len(cand_ids))
            kept_sims, kept_ids, short = drop_excluded(cand_sims, cand_ids.astype(np.int64, copy=False), rows,
                                                       partner, k)
            if short.any():  # a query whose probed lists hold fewer than k others: brute force for it
                kept_ids[short], kept_sims[short] = _brute_force(x, rows[short], k, partner)
            yield rows, kept_sims, kept_ids
        self.seconds["search"] = round(time.perf_counter() - started - self.seconds.get("build", 0.0), 3)

    def recall_rows(self) -> np.ndarray:
        """The keyed sample of rows whose neighbours are checked by brute force (empty without a check)."""
        if self.kind == "exact" or self.params.check_queries <= 0:
            return np.empty(0, np.int64)
        return _sample_rows(len(self.x), self.params.check_queries, self.params.seed, "recall-check")

    def recall(self, ids: np.ndarray, sampled: bool = False) -> float | None:
        """Recall@k on ``recall_rows()``; ``ids`` holds every row's neighbours, or only the sample's."""
        rows = self.recall_rows()
        if not len(rows):
            return None
        started = time.perf_counter()
        truth, _ = _brute_force(self.x, rows, self.k, self.partner)
        found = ids if sampled else ids[rows]
        self.seconds["recall_check"] = round(time.perf_counter() - started, 3)
        return float((truth[:, :, None] == found[:, None, :]).any(axis=2).mean())


def knn_among(queries: np.ndarray, refs: np.ndarray, query_pos: np.ndarray, k: int,
              params: IndexParams | None = None, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of a (small) reference set for every query, never the query itself: ``query_pos[i]`` is
    query i's position among ``refs`` (-1 when it is not a reference). Exact (a flat FAISS index, on the GPU
    when there is one), since a reference subset is small. Returns Euclidean distances and reference ids.
    With ``rows``, the queries are ``queries[rows]``, gathered one search chunk at a time (never all at once)."""
    n = len(queries) if rows is None else len(rows)
    dist = np.empty((n, k), np.float32)
    ids = np.empty((n, k), np.int64)
    for (start, end), kept_dist, kept_ids in _among_blocks(queries, refs, query_pos, k, params, rows):
        ids[start:end], dist[start:end] = kept_ids, kept_dist
    return dist, ids


def kth_among(queries: np.ndarray, refs: np.ndarray, query_pos: np.ndarray, k: int, reduce: Callable[[np.ndarray], np.ndarray],
              params: IndexParams | None = None, rows: np.ndarray | None = None) -> np.ndarray:
    """``reduce`` of each search chunk's (queries, k) distances, e.g. the k-distance, as ``knn_among`` finds
    them: one value per query is kept, not k distances and k ids (at a million queries and k = 32 that is
    4 MB instead of 400)."""
    n = len(queries) if rows is None else len(rows)
    out = np.empty(n, np.float64)
    for (start, end), kept_dist, _ in _among_blocks(queries, refs, query_pos, k, params, rows):
        out[start:end] = reduce(kept_dist)
    return out


def _among_blocks(queries: np.ndarray, refs: np.ndarray, query_pos: np.ndarray, k: int, params: IndexParams | None,
                  rows: np.ndarray | None) -> Iterator[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
    params = params or IndexParams()
    queries, refs = _check(queries), _check(refs)
    if len(refs) < k + 1:
        raise ValueError(f"{len(refs)} references cannot give every query k={k} neighbours")
    index = _flat_index(refs, params)
    n = len(queries) if rows is None else len(rows)
    for start, end in chunks(n, params.chunk):
        block = queries[start:end] if rows is None else take_rows(queries, rows[start:end])
        sims, found = index.search(block, k + 1)
        release_pages(queries)
        kept_sims, kept_ids, _ = drop_excluded(sims, found.astype(np.int64, copy=False),
                                               np.asarray(query_pos[start:end], np.int64), None, k)
        yield (start, end), ip_to_distance(kept_sims), kept_ids


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive blocks of ``size`` over ``n`` rows (the last one shorter)."""
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _flat_index(x: np.ndarray, params: IndexParams):
    index = faiss.IndexFlatIP(x.shape[1])
    if params.gpu and gpu_count() > 0:  # pragma: no cover - needs faiss-gpu and a GPU
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    return index


def _exact_search(x: np.ndarray, k: int, params: IndexParams, seconds: dict[str, float]):
    started = time.perf_counter()
    index = _flat_index(x, params)
    seconds["build"] = round(time.perf_counter() - started, 3)
    for start, end in chunks(len(x), params.chunk):
        sims, ids = index.search(x[start:end], k)
        yield start, ids, sims


def _hnsw_search(x: np.ndarray, k: int, params: IndexParams, seconds: dict[str, float]):
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(x.shape[1], params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    index.add(x)
    seconds["build"] = round(time.perf_counter() - started, 3)
    index.hnsw.efSearch = max(params.ef_search, k)
    for start, end in chunks(len(x), params.chunk):
        sims, ids = index.search(x[start:end], k)
        yield start, ids, sims


@dataclasses.dataclass
class _Ivf:
    """An IVF over projected vectors with every vector's probe lists precomputed (the self-join). The
    projection is applied block by block (``projected``), never held for every vector at once."""

    x: np.ndarray
    projection: np.ndarray | None  # (d, pca_dim), or None: the lists are over the vectors themselves
    index: faiss.IndexIVF
    lists: np.ndarray  # (n, nprobe) int32 probe lists of every vector, nearest first (half of faiss's int64)
    coarse: np.ndarray  # (n, nprobe) squared distances to those centroids

    def projected(self, start: int, end: int) -> np.ndarray:
        return project(self.x, self.projection, start, end)

    def probes(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows start..end-1's probe lists (as the int64 faiss takes) and coarse distances."""
        return np.ascontiguousarray(self.lists[start:end], np.int64), self.coarse[start:end]


def project(x: np.ndarray, projection: np.ndarray | None, start: int, end: int) -> np.ndarray:
    """Rows start..end-1 of ``x`` in the index's space (projected when there is a projection), as a
    C-contiguous array of their own; the pages of a memory-mapped ``x`` are released after the read."""
    block = x[start:end]
    out = np.ascontiguousarray(block @ projection if projection is not None else block, dtype=np.float32)
    release_pages(x)
    return out


def _sample_rows(n: int, size: int, seed: int, what: str) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    rng = keyed_rng(seed, "filters/index", what)
    return np.sort(rng.choice(n, size=size, replace=False))


def pca_projection(x: np.ndarray, dim: int, seed: int = 0, sample: int = 65_536) -> np.ndarray | None:
    """The top principal directions (d x dim) from a keyed sample, or None when no projection applies."""
    if dim <= 0 or dim >= x.shape[1]:
        return None
    rows = take_rows(x, _sample_rows(len(x), sample, seed, "pca"))
    centred = rows - rows.mean(axis=0, keepdims=True)
    cov = (centred.T @ centred).astype(np.float64) / max(1, len(rows) - 1)
    _, vecs = np.linalg.eigh(cov)
    return np.ascontiguousarray(vecs[:, ::-1][:, :dim], dtype=np.float32)


def build_ivf(x: np.ndarray, params: IndexParams, code: str | None = None) -> _Ivf:
    n = len(x)
    proj = pca_projection(x, params.pca_dim, params.seed)
    d = proj.shape[1] if proj is not None else x.shape[1]
    nlist = params.nlist or auto_nlist(n)
    nlist = max(1, min(nlist, n))
    nprobe = min(params.nprobe or auto_nprobe(n), nlist)
    train = take_rows(x, _sample_rows(n, nlist * params.train_per_list, params.seed, "kmeans"))
    if proj is not None:
        train = np.ascontiguousarray(train @ proj)
    kmeans = faiss.Kmeans(d, nlist, niter=10, seed=params.seed, max_points_per_centroid=params.train_per_list,
                          min_points_per_centroid=1, verbose=False)  # a small sample is intended: no warning
    kmeans.train(train)
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(kmeans.centroids)
    if (code or params.code) == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
        index.train(train)  # trains the codec only: the quantizer already holds nlist centroids
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
        index.is_trained = True
    index.referenced_objects = [quantizer]  # keep the quantizer alive as long as the index
    coarse = np.empty((n, nprobe), np.float32)
    lists = np.empty((n, nprobe), np.int32)
    for start, end in chunks(n, params.chunk * 4):  # rows are added in order: their ids are their row numbers
        block = project(x, proj, start, end)
        coarse[start:end], found = quantizer.search(block, nprobe)
        lists[start:end] = found
        add_preassigned(index, block, np.ascontiguousarray(found[:, 0]))
    index.nprobe = nprobe
    return _Ivf(x=x, projection=proj, index=index, lists=lists, coarse=coarse)


def _ivf_search(x: np.ndarray, k: int, params: IndexParams, seconds: dict[str, float]):
    started = time.perf_counter()
    ivf = build_ivf(x, params)
    seconds["build"] = round(time.perf_counter() - started, 3)
    candidates = max(k, int(math.ceil(params.refine * k)))
    for start, end in chunks(len(x), params.chunk):
        _, cand = search_preassigned(ivf.index, ivf.projected(start, end), candidates, *ivf.probes(start, end))
        sims, ids = _refine(x, start, np.ascontiguousarray(cand, dtype=np.int64), k)
        yield start, ids, sims


def _refine(x: np.ndarray, start: int, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of queries ``start..`` with their candidates, the best k kept.

    The candidates' vectors are gathered (``take_rows``) REFINE_QUERIES queries at a time into an array of
    their own: handed the whole memory-mapped store, faiss would fault in the rows of every list the
    queries probed, which is nearly all of the store at a million rows. The products are faiss's own over
    the same floats, so the neighbours are the same either way."""
    m, candidates = cand.shape
    d = x.shape[1]
    sims, ids = np.empty((m, k), np.float32), np.empty((m, k), np.int64)
    for lo in range(0, m, REFINE_QUERIES):
        hi = min(m, lo + REFINE_QUERIES)
        part = cand[lo:hi]
        valid = part >= 0  # faiss marks a short list with -1 and stops reading a row at the first one
        rows, local = np.unique(part[valid], return_inverse=True)
        if not len(rows):
            sims[lo:hi], ids[lo:hi] = -np.finfo(np.float32).max, -1  # what faiss gives a query without candidates
            continue
        compact = np.full(part.shape, -1, np.int64)
        compact[valid] = local
        base = take_rows(x, rows)
        queries = np.ascontiguousarray(x[start + lo:start + hi], dtype=np.float32)
        release_pages(x)
        found = np.empty((hi - lo, k), np.int64)
        faiss.knn_inner_products_by_idx(
            faiss.swig_ptr(queries), faiss.swig_ptr(base), faiss.swig_ptr(compact), d, hi - lo, len(base),
            candidates, k, faiss.swig_ptr(sims[lo:hi]), faiss.swig_ptr(found), candidates,
        )
        ids[lo:hi] = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
    return sims, ids


def similar_pairs(x: np.ndarray, threshold: float, params: IndexParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) with cosine similarity >= threshold: a range search, exact or through the IVF."""
    params = params or IndexParams()
    x = _check(x)
    n = len(x)
    kind = resolve_kind(n, params)
    firsts, seconds = [], []
    if kind == "ivf":
        ivf = build_ivf(x, params, code="flat")  # exact projected distances: a candidate superset
        radius = float(max(0.0, 2.0 - 2.0 * threshold)) * (1 + 1e-4) + 1e-6
        for start, end in chunks(n, params.chunk):
            lims, _, found = range_search_preassigned(ivf.index, ivf.projected(start, end), radius,
                                                      *ivf.probes(start, end))
            rows = np.repeat(np.arange(start, end), np.diff(lims).astype(np.int64))
            keep = found > rows
            rows, found = rows[keep], found[keep]
            sims = np.einsum("ij,ij->i", x[rows], x[found]) if len(rows) else np.zeros(0, np.float32)
            ok = sims >= threshold
            firsts.append(rows[ok])
            seconds.append(found[ok])
    else:  # exact, on the CPU (GPU flat indexes have no range search; neither has HNSW, reliably)
        index = _flat_index(x, params.model_copy(update={"gpu": False}))
        for start, end in chunks(n, params.chunk):
            lims, _, found = index.range_search(x[start:end], float(threshold))
            rows = np.repeat(np.arange(start, end), np.diff(lims).astype(np.int64))
            keep = found > rows
            firsts.append(rows[keep])
            seconds.append(found[keep].astype(np.int64))
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts).astype(np.int64), np.concatenate(seconds).astype(np.int64)
