"""Generated embeddings with known structure, for tests and benchmarks of the detectors and indexes.

Clean points are clusters on a low-dimensional manifold embedded in the full space, plus isotropic noise
(CLIP embeddings have a low intrinsic dimensionality and a clustered, web-like topic structure). Two
kinds of suspicious points are planted: a *tight cluster* far from the clean clusters (what a backdoor
with one trigger and one target caption looks like to the victim model: sparse surroundings, but
its members are close to each other) and *sparse points* isolated from everything.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from poisonlab.pipelines.keyed import keyed_rng


@dataclasses.dataclass(frozen=True)
class PlantedSpec:
    """What to generate; the same spec always gives the same arrays."""

    n: int
    dim: int = 512
    latent_dim: int = 48
    clusters: int | None = None  # default: one per ~500 points
    within: float = 0.45  # spread of a cluster in latent units (centres have unit spread)
    noise: float = 0.012  # isotropic noise per dimension of the full space
    tight_cluster: int = 0  # size of the planted tight cluster
    tight_spread: float = 0.02
    sparse_points: int = 0  # isolated points
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Planted:
    vectors: np.ndarray  # (n, dim) float32, L2-normalised
    labels: np.ndarray  # (n,) int8: 0 clean, 1 tight cluster, 2 sparse point

    @property
    def positives(self) -> np.ndarray:
        return self.labels > 0


def planted_embeddings(spec: PlantedSpec) -> Planted:
    """Clean clusters plus the planted points, in keyed-shuffled order (planted points are not at the end)."""
    rng = keyed_rng(spec.seed, "filters/synthetic", f"{spec.n}x{spec.dim}")
    n_clean = spec.n - spec.tight_cluster - spec.sparse_points
    if n_clean <= 0:
        raise ValueError("planted points leave no clean points")
    clusters = spec.clusters or max(4, n_clean // 500)
    basis, _ = np.linalg.qr(rng.standard_normal((spec.dim, spec.latent_dim)))
    basis = basis.T.astype(np.float32)  # (latent, dim), orthonormal rows
    centres = rng.standard_normal((clusters, spec.latent_dim)).astype(np.float32)
    latent = np.empty((spec.n, spec.latent_dim), dtype=np.float32)
    assign = rng.integers(0, clusters, n_clean)
    latent[:n_clean] = centres[assign] + spec.within * rng.standard_normal((n_clean, spec.latent_dim), dtype=np.float32)
    labels = np.zeros(spec.n, dtype=np.int8)
    end = n_clean
    if spec.tight_cluster:
        # far from every clean centre: a direction with a large norm in latent space
        centre = rng.standard_normal(spec.latent_dim).astype(np.float32)
        centre *= 3.0 / np.linalg.norm(centre) * np.sqrt(spec.latent_dim) / 4
        latent[end:end + spec.tight_cluster] = centre + spec.tight_spread * rng.standard_normal(
            (spec.tight_cluster, spec.latent_dim), dtype=np.float32)
        labels[end:end + spec.tight_cluster] = 1
        end += spec.tight_cluster
    if spec.sparse_points:
        sparse = rng.standard_normal((spec.sparse_points, spec.latent_dim)).astype(np.float32)
        latent[end:] = sparse * 2.5
        labels[end:] = 2
    vectors = latent @ basis
    vectors += spec.noise * rng.standard_normal((spec.n, spec.dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(spec.n)
    return Planted(vectors=np.ascontiguousarray(vectors[order]), labels=labels[order])
