"""A rate-free k-distance: neighbours among keyed random reference subsets, not the whole dataset.

Why: a k-NN detector sees a backdoor only while k exceeds the number of poisoned pairs that share a
trigger; inside a cluster of c > k near-copies every member's k nearest others are its fellows, and the
cluster looks *dense*. c grows with the poison rate and the dataset size, so no fixed k survives.
Against a random subset of m references a cluster of rate r has about m·r members; choosing
m = k / (2 · max_rate) leaves at most k/2 of them in the subset at any rate up to ``max_rate``, so the
k-th nearest reference of a poisoned point lies outside its cluster, far away, at every plausible rate.
Clean points in populated regions still find k references nearby. One subset is noisy (which points
it holds is luck), so the score is averaged over several keyed subsets, and over a few k (each with its
own subset size), after rank normalisation (so no k or subset dominates by scale).

Subsets are drawn by keyed randomness on the sample keys (rank of a keyed hash per subset), so the same
seed gives the same scores whatever the worker count, shard order or reruns. The search is exact, with
a flat FAISS index over each subset (``index.kth_among``): a subset is small by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import Field, field_validator

from poisonlab.filters.context import ScanContext
from poisonlab.filters.detectors import DETECTORS, Detector, EmbeddingSpace
from poisonlab.filters.index import IndexParams, kth_among
from poisonlab.filters.outliers import k_distance
from poisonlab.filters.ranks import rank_normalise
from poisonlab.filters.store import PAYLOAD_SPACE
from poisonlab.filters.vectors import take_rows
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.registry import Params

STAGE = "filters/kdist_subsets"


def subset_size(k: int, max_rate: float, n: int) -> int:
    """References per subset: a cluster of rate ``max_rate`` expects k/2 members in it (at most n - 1)."""
    return int(min(n - 1, max(k + 1, math.floor(k / (2.0 * max_rate)))))


def key_hashes(keys: Sequence[str], rows: np.ndarray, seed: int) -> np.ndarray:
    """One keyed 64-bit hash per row (hashed once; every subset is derived from it)."""
    return np.fromiter((keyed_u64(seed, STAGE, keys[r]) for r in rows.tolist()), dtype=np.uint64, count=len(rows))


def _mix(hashes: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (hash + salt x golden ratio): an independent-looking uint64 per (key, salt)."""
    with np.errstate(over="ignore"):
        z = hashes + np.uint64(salt + 1) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keyed_subset(rows: np.ndarray, hashes: np.ndarray, size: int, salt: int) -> np.ndarray:
    """The ``size`` rows whose mixed key hash is smallest: a pure function of (seed, salt, the keys), so
    the same whatever the row order (two keys tie with probability about n^2 / 2^64)."""
    order = np.argsort(_mix(hashes, salt), kind="stable")[:size]
    return np.sort(rows[order])


def subset_kdistance(vectors: np.ndarray, order: np.ndarray, subset: np.ndarray, k: int,
                     index: IndexParams) -> np.ndarray:
    """k-distance of every row ``order[i]`` among the rows ``order[subset]`` (a row in the subset skips
    itself). ``kth_among`` gathers the queries a search chunk at a time and keeps only each chunk's
    k-distances: no copy of the store and no (rows, k) neighbour table is made."""
    position = np.full(len(order), -1, np.int64)
    position[subset] = np.arange(len(subset))
    references = take_rows(vectors, order[subset])
    return kth_among(vectors, references, position, k, lambda dist: k_distance(dist, k), index, rows=order)


def subsets_score(vectors: np.ndarray, rows: np.ndarray, keys: Sequence[str], ks: list[int], subsets: int,
                  max_rate: float, seed: int, index: IndexParams) -> np.ndarray:
    """Mean over (k, subset) of the rank-normalised k-distance among that subset, for ``rows``.

    The search runs on the rows arranged in keyed order, not in the order they arrived: BLAS sums a dot
    product in an order that depends on where the row falls in its block, so the same pair in another
    arrangement can differ in the last bit, and a near-tie then ranks the other way. One canonical
    arrangement gives the same bytes whatever the shard order or number of workers.
    """
    hashes = key_hashes(keys, rows, seed)
    canonical = np.argsort(hashes, kind="stable")
    order, hashes = rows[canonical], hashes[canonical]
    positions = np.arange(len(rows))
    total = np.zeros(len(rows))
    for i, k in enumerate(ks):
        size = subset_size(k, max_rate, len(rows))
        for s in range(subsets):
            subset = keyed_subset(positions, hashes, size, salt=i * subsets + s)
            total += rank_normalise(subset_kdistance(vectors, order, subset, k, index))
    out = np.empty(len(rows))
    out[canonical] = total / (len(ks) * subsets)
    return out


class KdistSubsetsParams(Params):
    k: list[int] = Field([8, 16, 32], min_length=1, description="neighbourhood scales (each with its own subsets)")
    subsets: int = Field(8, ge=1, description="keyed random reference subsets per k")
    max_rate: float = Field(0.02, gt=0, lt=0.5, description="largest share of the data one trigger is assumed to "
                            "hold; subsets of k/(2 max_rate) references keep such a cluster below k/2 members")
    space: EmbeddingSpace = Field(PAYLOAD_SPACE, description="a stored space (image, graph, text, ...; the payload's own by default)")
    seed: int = Field(0, description="seed of the keyed subsets")
    index: IndexParams = Field(default_factory=IndexParams, description="FAISS settings (the search is exact)")

    @field_validator("k")
    @classmethod
    def _positive(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError("every k must be at least 1")
        return sorted(set(ks))


@DETECTORS.register("kdist_subsets", KdistSubsetsParams)
class KdistSubsets(Detector):
    """k-distance among keyed random reference subsets, rank-averaged: needs no knowledge of the poison rate
    up to ``max_rate`` (see the module docstring for why)."""

    def __init__(self, params: KdistSubsetsParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return (self.params.space,)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        p = self.params
        vectors, ok = ctx.corpus.model(model).space(p.space)
        rows = np.flatnonzero(ok)
        out = np.full(len(ctx.corpus), np.nan)
        if len(rows) <= max(p.k) + 1:
            return out
        out[rows] = subsets_score(vectors, rows, ctx.corpus.keys, p.k, p.subsets, p.max_rate, p.seed, p.index)
        return out
