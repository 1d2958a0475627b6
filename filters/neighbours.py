"""Neighbour graphs over a corpus: which points are references, and who the k nearest others of each are.

``space`` says what is compared: any stored space among itself (``image`` among images, ``text`` among
captions, ``graph`` among graphs, ...) or ``cross`` (an image among the images *and* captions of the
dataset, as Huang et al. do for image-text pairs; a pair's own caption is never its neighbour). ``mode`` says where neighbours come from:

* ``global``: the whole dataset, through a FAISS index (poisonlab's setting: every sample is compared
  with every other, so a trigger cannot hide behind the few hundred references a batch holds);
* ``batch_local``: only the samples of the same batch of ``batch_size`` rows, batches drawn by a keyed
  shuffle (Huang et al.'s setting, kept to compare with their results).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from poisonlab.filters.corpus import ModelView
from poisonlab.filters.index import IndexParams, ip_to_distance, self_knn, self_kth_distance
from poisonlab.filters.outliers import k_distance
from poisonlab.filters.sharded_knn import ShardRunner
from poisonlab.filters.store import PAYLOAD_SPACE
from poisonlab.filters.vectors import take_rows
from poisonlab.pipelines.keyed import keyed_u64

CROSS: dict[str, tuple[str, str]] = {"cross": (PAYLOAD_SPACE, "text")}  # query space, then the other references
Mode = Literal["global", "batch_local"]


@dataclasses.dataclass(frozen=True)
class RefSet:
    """Reference points (vectors) with the corpus row each came from; queries are the first ``queries``."""

    vectors: np.ndarray
    rows: np.ndarray  # corpus row of each reference point
    queries: int  # reference points 0..queries-1 are the points being scored
    partner: np.ndarray | None  # cross space: the other modality of the same pair, or -1


def _rows_of(vectors: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(ok)
    return (vectors if len(rows) == len(vectors) else take_rows(vectors, rows)), rows  # no copy when every row has one


def space_reads(space: str) -> tuple[str, ...]:
    """The stored spaces a neighbourhood space compares: ``cross`` is images (graphs) among them and captions."""
    return CROSS.get(space, (space,))


def reference_set(view: ModelView, space: str) -> RefSet:
    if space not in CROSS:
        vectors, rows = _rows_of(*view.space(space))
        return RefSet(vectors, rows, len(rows), None)
    (query_vecs, query_ok), (other_vecs, other_ok) = (view.space(s) for s in CROSS[space])
    img_rows, txt_rows = np.flatnonzero(query_ok), np.flatnonzero(other_ok)
    vectors = np.concatenate([take_rows(query_vecs, img_rows), take_rows(other_vecs, txt_rows)])
    rows = np.concatenate([img_rows, txt_rows])
    # partner: query ref j <-> the other-space ref of the same corpus row (when that row has one)
    text_ref_of_row = np.full(len(query_ok), -1, np.int64)
    text_ref_of_row[txt_rows] = len(img_rows) + np.arange(len(txt_rows))
    image_ref_of_row = np.full(len(query_ok), -1, np.int64)
    image_ref_of_row[img_rows] = np.arange(len(img_rows))
    partner = np.concatenate([text_ref_of_row[img_rows], image_ref_of_row[txt_rows]])
    return RefSet(np.ascontiguousarray(vectors), rows, len(img_rows), partner)


@dataclasses.dataclass(frozen=True)
class NeighbourGraph:
    """The k nearest other reference points of every reference point (distances ascending)."""

    refs: RefSet
    dist: np.ndarray  # (m, K) float32
    ids: np.ndarray  # (m, K) int64, indices into refs
    source: str  # index kind, or "batch_local"
    recall_estimate: float | None = None  # approximate indexes: recall@k measured on a sample of queries
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    plan: dict | None = None  # with a memory budget: codes, index shards, memory per shard
    kth_only: int = 0  # > 0: ``dist`` holds only the distance to each point's kth_only-th neighbour, ``ids`` none

    @property
    def k(self) -> int:
        return int(self.dist.shape[1])

    def k_distance(self, k: int) -> np.ndarray:
        """Every point's floored distance to its k-th nearest other point."""
        if not self.kth_only:
            return k_distance(self.dist, k)
        if k != self.kth_only:
            raise ValueError(f"this graph holds the distance to the {self.kth_only}-th neighbour, not the {k}-th")
        return k_distance(self.dist, 1)


def global_graph(refs: RefSet, k: int, params: IndexParams, runner: ShardRunner | None = None) -> NeighbourGraph:
    """Neighbours over the whole dataset; ``runner`` searches the index shards of a memory budget."""
    result = self_knn(refs.vectors, k, params, refs.partner, runner)
    return NeighbourGraph(refs, result.dist, result.ids, result.kind, result.recall_estimate, result.seconds,
                          result.plan)


def global_kth_distances(refs: RefSet, k: int, params: IndexParams) -> NeighbourGraph:
    """Only each point's distance to its k-th nearest other point over the whole dataset (no lists)."""
    result = self_kth_distance(refs.vectors, k, params, refs.partner)
    return NeighbourGraph(refs, result.dist, result.ids, result.kind, result.recall_estimate, result.seconds,
                          kth_only=k)


def keyed_batches(keys: Sequence[str], rows: np.ndarray, batch_size: int, seed: int, min_size: int) -> list[np.ndarray]:
    """Corpus rows in a keyed shuffle, cut into batches; a short last batch joins the one before it."""
    order = sorted(rows.tolist(), key=lambda r: keyed_u64(seed, "filters/batch_local", keys[r]))
    batches = [np.array(order[s:s + batch_size], dtype=np.int64) for s in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(min_size, batch_size // 2):
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return batches


def batch_local_graph(refs: RefSet, keys: Sequence[str], k: int, batch_size: int, seed: int) -> NeighbourGraph:
    """Neighbours within each keyed batch only, by brute force (Huang et al.'s batch of references)."""
    m = len(refs.rows)
    refs_of_row: dict[int, list[int]] = {}
    for j, row in enumerate(refs.rows.tolist()):
        refs_of_row.setdefault(row, []).append(j)
    rows = np.array(sorted(refs_of_row), dtype=np.int64)
    dist = np.full((m, k), np.inf, np.float32)
    ids = np.full((m, k), -1, np.int64)
    for batch in keyed_batches(keys, rows, batch_size, seed, k + 2):
        members = np.array([j for r in batch.tolist() for j in refs_of_row[r]], dtype=np.int64)
        if len(members) <= k + (refs.partner is not None):
            raise ValueError(f"a batch of {len(members)} references cannot give k={k} neighbours; raise batch_size")
        vecs = refs.vectors[members]
        sims = vecs @ vecs.T
        np.fill_diagonal(sims, -np.inf)
        if refs.partner is not None:
            position = {int(j): i for i, j in enumerate(members)}
            for i, j in enumerate(members.tolist()):
                p = int(refs.partner[j])
                if p in position:
                    sims[i, position[p]] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        dist[members] = ip_to_distance(np.take_along_axis(top_sims, order, axis=1))
        ids[members] = members[top]
    return NeighbourGraph(refs, dist, ids, "batch_local")
