"""Exact merge of per-shard neighbour lists: the k smallest distances of their union, ties by row id.

Every index shard returns its own top-k for a block of queries; the global top-k is contained in their
union, so keeping the k smallest (distance, row id) pairs gives exactly what one index over all rows would
return. The order (distance, then row id) is total, so merging is associative and commutative: shards can
be merged in any order, all at once or one by one into a running result, and the answer is the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MISSING = -1  # a padded slot (a shard holding fewer than k rows, or an inverted list running short)
_LAST = np.iinfo(np.int64).max


def empty_result(rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A result with no neighbours yet: infinite distances and missing ids."""
    return np.full((rows, k), np.inf, np.float32), np.full((rows, k), MISSING, np.int64)


def merge_topk(dists: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per row, the k smallest distances of all parts (ties broken by the smaller row id; missing
    slots last); pads with (inf, -1) when the parts hold fewer than k in all."""
    if not dists or len(dists) != len(ids):
        raise ValueError("merge_topk needs one id array per distance array, and at least one part")
    dist = np.hstack([np.asarray(d, np.float32) for d in dists])
    idx = np.hstack([np.asarray(i, np.int64) for i in ids])
    missing = idx < 0
    dist = np.where(missing, np.inf, dist)
    order = np.lexsort((np.where(missing, _LAST, idx), dist), axis=1)[:, :k]
    dist, idx = np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)
    if dist.shape[1] < k:
        pad_d, pad_i = empty_result(len(dist), k - dist.shape[1])
        dist, idx = np.hstack([dist, pad_d]), np.hstack([idx, pad_i])
    return dist, idx


def drop_excluded(dist: np.ndarray, ids: np.ndarray, rows: np.ndarray, partner: np.ndarray | None,
                  k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Remove each query row itself (and its partner) from its merged list; the first k others, and which
    rows are left with fewer than k."""
    bad = (ids == rows[:, None]) | (ids < 0)
    if partner is not None:
        bad |= ids == partner[rows][:, None]
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    short = np.take_along_axis(bad, order, axis=1).any(axis=1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ids, order, axis=1), short
