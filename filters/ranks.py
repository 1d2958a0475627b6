"""Rank normalisation: the one way poisonlab puts scores of incomparable scales on one scale.

A k-distance, a log-odds and a count cannot be averaged, but their ranks can: each score is replaced by
its rank among the finite scores divided by their number (a value in (0, 1], 1 = most suspicious), which
depends only on the order of the scores. Combining ranks therefore cannot be dominated by a detector
whose scores happen to be large, and is unchanged by any increasing transformation of any input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.stats import rankdata

RankMethod = Literal["rank_mean", "rank_max"]


def rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Average rank / number of finite scores; NaN stays NaN (a sample a detector cannot score)."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full(scores.shape, np.nan)
    ok = np.isfinite(scores)
    if ok.any():
        out[ok] = rankdata(scores[ok], method="average") / ok.sum()
    return out


def combine_ranks(columns: Sequence[np.ndarray], method: RankMethod = "rank_mean",
                  weights: Sequence[float] | None = None) -> np.ndarray:
    """Rank-normalise each column, then take the (weighted) mean or the maximum where any has a rank.

    ``rank_mean`` rewards agreement between detectors; ``rank_max`` lets any one detector that is
    sure flag a sample (an attack one ingredient cannot see is not diluted by it).
    """
    if not columns:
        raise ValueError("nothing to combine")
    if weights is not None and len(weights) != len(columns):
        raise ValueError("give one weight per column")
    ranks = np.vstack([rank_normalise(c) for c in columns])
    have = np.isfinite(ranks)
    out = np.full(ranks.shape[1], np.nan)
    any_rank = have.any(axis=0)
    if method == "rank_max":
        out[any_rank] = np.nanmax(ranks[:, any_rank], axis=0)
        return out
    if method != "rank_mean":
        raise ValueError(f"unknown rank method {method!r}; use rank_mean or rank_max")
    w = np.ones(len(columns)) if weights is None else np.asarray(weights, dtype=np.float64)
    weighted = np.where(have, ranks * w[:, None], 0.0).sum(axis=0)
    total = np.where(have, w[:, None], 0.0).sum(axis=0)
    out[any_rank] = weighted[any_rank] / total[any_rank]
    return out
