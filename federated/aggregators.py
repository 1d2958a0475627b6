"""The server step of a federated round: registered aggregation rules over client deltas.

Every rule is a registered component (``get_registry("aggregator")``, listed by ``poisonlab components
aggregator``) with a typed ``Params`` model; ``create`` gives an object whose ``aggregate(updates, round)``
returns the aggregated delta and a report (which clients were kept or excluded and why, the norms it saw).
Rules are written in torch over one ``[clients, parameters]`` matrix (``updates.stack_updates``), after
Flower's ``server/strategy/aggregate.py``. Noise comes from a generator keyed by (seed, rule, round), never
from torch's global state, so a round aggregates to the same bytes on every rerun.

References: FedAvg (McMahan et al. 2017); coordinate-wise median and trimmed mean (Yin et al. 2018); Krum and
Multi-Krum (Blanchard et al. 2017); norm clipping with weak DP noise (Sun et al. 2019); FLAME (Nguyen et al.
2022).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field

from poisonlab.federated.updates import ClientUpdate, Delta, Layout, UpdateError, stack_updates, unflatten
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.registry import Params, get_registry

AGGREGATORS = get_registry("aggregator")


@dataclasses.dataclass
class Aggregate:
    """A rule's result: the delta to add to the global weights and what the rule decided."""

    delta: Delta
    kept: tuple[int, ...]
    excluded: dict[int, str]  # client -> why its update was left out
    norms: dict[int, float]  # L2 norm of each update as received
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """A JSON-able summary (no tensors) for a round's record."""
        return {"kept": list(self.kept), "excluded": {str(c): r for c, r in sorted(self.excluded.items())},
                "norms": {str(c): round(v, 6) for c, v in sorted(self.norms.items())}, **self.details}


def _finish(updates: Sequence[ClientUpdate], matrix: torch.Tensor, vector: torch.Tensor, layout: Layout,
            keep: torch.Tensor, reason: str, **details: Any) -> Aggregate:
    clients = [u.client for u in updates]
    norms = matrix.norm(dim=1)
    return Aggregate(unflatten(vector, layout), tuple(c for c, k in zip(clients, keep.tolist(), strict=True) if k),
                     {c: reason for c, k in zip(clients, keep.tolist(), strict=True) if not k},
                     {c: float(n) for c, n in zip(clients, norms.tolist(), strict=True)}, details)


def weighted_mean(matrix: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Rows averaged with weights proportional to their sample counts (FedAvg)."""
    total = samples.sum()
    if total <= 0:
        raise UpdateError("fedavg needs at least one sample among the updates it averages")
    return (samples / total) @ matrix


def _samples(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    return torch.tensor([float(u.samples) for u in updates])


def keyed_noise(size: int, std: float, seed: int, rule: str, round_: int) -> torch.Tensor:
    """Gaussian noise from a generator keyed by (seed, rule, round): the same bytes on every rerun."""
    generator = torch.Generator().manual_seed(keyed_u64(seed, f"federated/{rule}", f"round/{round_}") % 2**63)
    return torch.randn(size, generator=generator) * std


def _all_kept(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


def coordinate_median(matrix: torch.Tensor) -> torch.Tensor:
    """The per-coordinate median (the mean of the two middle values for an even count)."""
    ordered = matrix.sort(dim=0).values
    n = matrix.shape[0]
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@dataclasses.dataclass(frozen=True)
class FedAvg:
    """Sample-weighted mean of every update."""

    def aggregate(self, updates: Sequence[ClientUpdate], round_: int = 0) -> Aggregate:
        matrix, layout = stack_updates(updates)
        return _finish(updates, matrix, weighted_mean(matrix, _samples(updates)), layout, _all_kept(len(updates)), "")


@dataclasses.dataclass(frozen=True)
class Median:
    """Coordinate-wise median: each parameter the middle of the clients' values (unweighted)."""

    def aggregate(self, updates: Sequence[ClientUpdate], round_: int = 0) -> Aggregate:
        matrix, layout = stack_updates(updates)
        return _finish(updates, matrix, coordinate_median(matrix), layout, _all_kept(len(updates)), "")


class TrimmedMeanParams(Params):
    beta: float = Field(0.1, ge=0, lt=0.5, description="fraction of values cut from each end, per coordinate")


@dataclasses.dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise trimmed mean: per coordinate, drop the floor(beta n) lowest and highest values."""

    beta: float

    def aggregate(self, updates: Sequence[ClientUpdate], round_: int = 0) -> Aggregate:
        matrix, layout = stack_updates(updates)
        n = matrix.shape[0]
        cut = math.floor(self.beta * n)
        ordered = matrix.sort(dim=0).values
        return _finish(updates, matrix, ordered[cut:n - cut].mean(dim=0), layout, _all_kept(n), "",
                       trimmed_each_end=cut)


def krum_scores(matrix: torch.Tensor, f: int) -> torch.Tensor:
    """Blanchard et al.'s score: the sum of squared distances to the n - f - 2 nearest other updates."""
    n = matrix.shape[0]
    if n - f - 2 < 1:
        raise UpdateError(f"krum needs n > f + 2 updates (n={n}, f={f}); Blanchard et al. assume n > 2f + 2")
    wide = matrix.double()  # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: n x n memory, never n x n x parameters
    sq = wide.pow(2).sum(dim=1)
    squared = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * wide @ wide.T).clamp_min(0.0)
    squared.fill_diagonal_(math.inf)
    return squared.sort(dim=1).values[:, : n - f - 2].sum(dim=1)


class KrumParams(Params):
    f: int = Field(1, ge=0, description="Byzantine clients tolerated")


class MultiKrumParams(KrumParams):
    m: int | None = Field(None, ge=1, description="updates selected and averaged (default n - f)")


@dataclasses.dataclass(frozen=True)
class Krum:
    """Select the m updates with the lowest Krum scores (ties: the lower index) and average them (m=1: Krum)."""

    f: int
    m: int | None = 1

    def aggregate(self, updates: Sequence[ClientUpdate], round_: int = 0) -> Aggregate:
        matrix, layout = stack_updates(updates)
        n = matrix.shape[0]
        m = min(n, self.m if self.m is not None else n - self.f)
        scores = krum_scores(matrix, self.f)
        chosen = torch.sort(scores, stable=True).indices[:m]
        keep = torch.zeros(n, dtype=torch.bool)
        keep[chosen] = True
        return _finish(updates, matrix, matrix[keep].mean(dim=0), layout, keep, "krum: not among the lowest scores",
                       scores={str(u.client): float(s) for u, s in zip(updates, scores.tolist(), strict=True)})


class NormClipParams(Params):
    bound: float = Field(..., gt=0, description="largest L2 norm an update keeps")
    noise_std: float = Field(0.0, ge=0, description="std of Gaussian noise added to the aggregate (0: none)")
    seed: int = Field(0, description="keys the noise with the round")


@dataclasses.dataclass(frozen=True)
class NormClip:
    """Scale every update to L2 norm <= bound, sample-weighted mean, then optional keyed Gaussian noise."""

    bound: float
    noise_std: float = 0.0
    seed: int = 0

    def aggregate(self, updates: Sequence[ClientUpdate], round_: int = 0) -> Aggregate:
        matrix, layout = stack_updates(updates)
        scale = (self.bound / matrix.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        vector = weighted_mean(matrix * scale.unsqueeze(1), _samples(updates))
        if self.noise_std > 0:
            vector = vector + keyed_noise(vector.numel(), self.noise_std, self.seed, "norm_clip", round_)
        return _finish(updates, matrix, vector, layout, _all_kept(len(updates)), "",
                       clipped=[u.client for u, s in zip(updates, scale.tolist(), strict=True) if s < 1.0])


def cosine_distances(matrix: torch.Tensor) -> np.ndarray:
    """Pairwise 1 - cos between updates (float64; a zero update is at distance 1 from everything)."""
    unit = matrix.double() / matrix.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (1.0 - unit @ unit.T).clamp(0.0, 2.0).fill_diagonal_(0.0).numpy()


def majority_cluster(distances: np.ndarray, min_cluster_size: int | None = None) -> tuple[np.ndarray, bool]:
    """FLAME's filter: HDBSCAN (scikit-learn, a declared dependency) on precomputed cosine distances with a
    minimum cluster of n/2 + 1, so only a majority can form a cluster; clients it labels noise are left out.
    With fewer than 3 updates, or when no majority cluster forms, all are kept (and the flag is False)."""
    n = distances.shape[0]
    if n < 3:
        return np.ones(n, dtype=bool), False
    from sklearn.cluster import HDBSCAN

    size = min_cluster_size or n // 2 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn's notice about a future default of `copy`
        labels = HDBSCAN(min_cluster_size=size, min_samples=1, metric="precomputed",
                         allow_single_cluster=True).fit(distances).labels_
    if (labels < 0).all():
        return np.ones(n, dtype=bool), False  # nothing to tell apart (the report says so)
    largest = np.bincount(labels[labels >= 0]).argmax()
    return labels == largest, True


class FlameParams(Params):
    min_cluster_size: int | None = Field(None, ge=2, description="HDBSCAN's minimum cluster (default n // 2 + 1)")
    noise_lambda: float = Field(0.001, ge=0, description="noise std as a multiple of the median update norm "
                                "(FLAME's lambda; 0: no noise)")
    seed: int = Field(0, description="keys the noise with the round")


@dataclasses.dataclass(frozen=True)
class Flame:
    """FLAME: keep the majority cosine cluster, clip kept updates to the median norm of all updates, average
    them, add Gaussian noise of std lambda * median norm."""

    min_cluster_size: int | None = None
    noise_lambda: float = 0.001
    seed: int = 0

    def aggregate(self, updates: Sequence[ClientUpdate], round_: int = 0) -> Aggregate:
        matrix, layout = stack_updates(updates)
        mask, clustered = majority_cluster(cosine_distances(matrix), self.min_cluster_size)
        keep = torch.from_numpy(mask)
        norms = matrix.norm(dim=1)
        median_norm = float(coordinate_median(norms.unsqueeze(1)))
        scale = (median_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
        vector = (matrix[keep] * scale[keep].unsqueeze(1)).mean(dim=0)
        if self.noise_lambda > 0:
            vector = vector + keyed_noise(vector.numel(), self.noise_lambda * median_norm, self.seed, "flame", round_)
        return _finish(updates, matrix, vector, layout, keep, "flame: outside the majority cosine cluster",
                       clip_bound=median_norm, majority_cluster=clustered)


@AGGREGATORS.register("fedavg", Params, summary="FedAvg: sample-weighted mean of the client deltas")
def fedavg(params: Params) -> FedAvg:
    return FedAvg()


@AGGREGATORS.register("median", Params, summary="coordinate-wise median (Yin et al. 2018)")
def median(params: Params) -> Median:
    return Median()


@AGGREGATORS.register("trimmed_mean", TrimmedMeanParams, summary="coordinate-wise beta-trimmed mean (Yin et al. 2018)")
def trimmed_mean(params: TrimmedMeanParams) -> TrimmedMean:
    return TrimmedMean(params.beta)


@AGGREGATORS.register("krum", KrumParams, summary="Krum: the one update closest to its n - f - 2 neighbours")
def krum(params: KrumParams) -> Krum:
    return Krum(params.f, 1)


@AGGREGATORS.register("multi_krum", MultiKrumParams, summary="Multi-Krum: mean of the m best Krum scores")
def multi_krum(params: MultiKrumParams) -> Krum:
    return Krum(params.f, params.m)


@AGGREGATORS.register("norm_clip", NormClipParams, summary="clip update norms to a bound, fedavg, optional DP noise")
def norm_clip(params: NormClipParams) -> NormClip:
    return NormClip(params.bound, params.noise_std, params.seed)


@AGGREGATORS.register("flame", FlameParams, summary="FLAME: majority cosine cluster, median-norm clip, noise")
def flame(params: FlameParams) -> Flame:
    return Flame(params.min_cluster_size, params.noise_lambda, params.seed)
