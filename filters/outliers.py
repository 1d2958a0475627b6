"""Local outlier scores from a neighbour graph: k-distance, LID, SLOF and DAO (higher = more suspicious).

Definitions, for a point q with neighbours o_1..o_k (itself excluded) at distances d_1 <= ... <= d_k:

* k-distance     kd(q)  = d_k
* LID (MLE)      LID(q) = -( (1/k) * sum_i ln(d_i / d_k) )^-1          (Levina & Bickel; Amsaleg et al.)
* LID (MoM)      LID(q) = mu / (d_k - mu), mu = mean_i d_i              (Amsaleg et al.'s method of moments)
* SLOF           SLOF(q) = (1/k) * sum_o kd(q) / kd(o)                   (simplified LOF, Schubert et al.)
* DAO            DAO(q)  = (1/k) * sum_o (kd(q) / kd(o)) ^ LID(o)        (Anderberg et al., SDM 2024)

as used by Huang et al. (ICLR 2025) to find backdoor pairs, whose neighbourhoods are sparse relative to
their neighbours'. DAO is returned as ln DAO, computed with log-sum-exp: the same ranking as DAO itself,
without overflowing when a sparse point's ratio is raised to a neighbour's LID of 20 or more.

Where these differ from Huang et al.'s reference code (kept available for comparison where it matters):
their query's k-distance is the (k+1)-th nearest other point while a neighbour's is the k-th; their LID
adds 1e-4 inside the logarithm; and their DAO averages ``LID(o) * ln(kd(q)/kd(o))``, the logarithm of a
geometric mean, rather than the paper's arithmetic mean of powers (``aggregate="mean_log"`` gives theirs).
Distances are floored at ``EPS`` so that exact duplicates give large, finite scores instead of NaN.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-4  # below the resolution of sqrt(2 - 2cos) computed in float32
LID_CAP = 1e3  # a neighbourhood of identical distances has no measurable dimension: capped, not infinite


def _require(dist: np.ndarray, k: int) -> None:
    if dist.shape[1] < k:
        raise ValueError(f"the neighbour graph holds {dist.shape[1]} neighbours, fewer than k={k}")


def _floored(dist: np.ndarray, k: int) -> np.ndarray:
    _require(dist, k)
    return np.maximum(dist[:, :k].astype(np.float64), EPS)


def k_distance(dist: np.ndarray, k: int) -> np.ndarray:
    """The k-th column only, floored (a float64 copy of one column, not of the whole (n, k) table)."""
    _require(dist, k)
    return np.maximum(dist[:, k - 1].astype(np.float64), EPS)


def lid_mle(dist: np.ndarray, k: int) -> np.ndarray:
    d = _floored(dist, k)
    mean_log = np.mean(np.log(d[:, -1:] / d), axis=1)  # >= 0
    return 1.0 / np.maximum(mean_log, 1.0 / LID_CAP)


def lid_mom(dist: np.ndarray, k: int) -> np.ndarray:
    d = _floored(dist, k)
    mu = d.mean(axis=1)
    return np.minimum(mu / np.maximum(d[:, -1] - mu, mu / LID_CAP), LID_CAP)


def slof(dist: np.ndarray, ids: np.ndarray, k: int, ref_kdist: np.ndarray) -> np.ndarray:
    """Mean ratio of q's k-distance to its neighbours' k-distances (1 inside a uniform region)."""
    kd = k_distance(dist, k)
    return np.mean(kd[:, None] / ref_kdist[ids[:, :k]], axis=1)


def dao(dist: np.ndarray, ids: np.ndarray, k: int, ref_kdist: np.ndarray, ref_lid: np.ndarray,
        aggregate: str = "mean_power") -> np.ndarray:
    """ln DAO: each neighbour's density ratio raised to that neighbour's local intrinsic dimensionality."""
    kd = k_distance(dist, k)
    neighbours = ids[:, :k]
    terms = ref_lid[neighbours] * (np.log(kd)[:, None] - np.log(ref_kdist[neighbours]))
    if aggregate == "mean_log":
        return terms.mean(axis=1)
    if aggregate != "mean_power":
        raise ValueError(f"unknown DAO aggregate {aggregate!r}; use mean_power or mean_log")
    top = terms.max(axis=1)
    return top + np.log(np.mean(np.exp(terms - top[:, None]), axis=1))


LID_ESTIMATORS = {"mle": lid_mle, "mom": lid_mom}
