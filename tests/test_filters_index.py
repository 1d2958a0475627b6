"""FAISS neighbour search: exact against numpy brute force; IVF and HNSW against exact (recall, detector AUROC)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from poisonlab.filters.context import ScanContext
from poisonlab.filters.corpus import corpus_from_vectors
from poisonlab.filters.detectors import DETECTORS
from poisonlab.filters.index import (
    IndexParams,
    auto_nlist,
    auto_nprobe,
    gpu_count,
    resolve_kind,
    self_knn,
    self_kth_distance,
    similar_pairs,
)
from poisonlab.filters.synthetic import PlantedSpec, planted_embeddings


def numpy_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.maximum(0, 2 - 2 * np.take_along_axis(sims, ids, axis=1))), ids


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float((truth[:, :, None] == found[:, None, :]).any(axis=2).mean())


@pytest.fixture(scope="module")
def planted():
    return planted_embeddings(PlantedSpec(n=20_000, dim=128, latent_dim=32, tight_cluster=10, sparse_points=40, seed=4))


@pytest.fixture(scope="module")
def exact(planted):
    return self_knn(planted.vectors, 16, IndexParams(kind="exact"))


def test_exact_search_is_brute_force() -> None:
    x = planted_embeddings(PlantedSpec(n=1500, dim=48, latent_dim=12, seed=9)).vectors
    result = self_knn(x, 10, IndexParams(kind="exact"))
    dist, ids = numpy_knn(x, 10)
    assert result.kind == "exact"
    assert recall(ids, result.ids) > 0.999  # only exact ties may be ordered differently
    np.testing.assert_allclose(result.dist, dist, atol=1e-3)
    assert not (result.ids == np.arange(len(x))[:, None]).any()


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_keep_recall_and_detector_auroc(planted, exact, kind: str) -> None:
    # at 20k vectors a 500-point cluster spans several of the auto nlist's lists: probe more than the
    # default (benchmarks/bench_filters.py checks the defaults at 100k and 1M)
    params = IndexParams(kind=kind, pca_dim=32, nprobe=16)
    approx = self_knn(planted.vectors, 16, params)
    assert approx.kind == kind
    measured = recall(exact.ids, approx.ids)
    assert measured >= 0.95
    assert abs(approx.recall_estimate - measured) < 0.05  # the sampled estimate the scan reports
    labels = planted.positives
    contexts = {label: ScanContext(corpus_from_vectors(planted.vectors)) for label in ("exact", kind)}
    for name in ("kdist", "slof", "dao"):
        scores = {}
        for label, index in (("exact", IndexParams(kind="exact")), (kind, params)):
            detector = DETECTORS.create(name, {"k": 16, "index": index.model_dump()})
            scores[label] = detector.score(contexts[label], "model")  # one graph per context
        a, e = roc_auc_score(labels, scores[kind]), roc_auc_score(labels, scores["exact"])
        assert abs(a - e) <= 0.01, (name, a, e)


def test_a_poor_index_is_reported(planted, exact) -> None:
    poor = self_knn(planted.vectors, 16, IndexParams(kind="ivf", pca_dim=8, nlist=512, nprobe=1))
    assert poor.recall_estimate < 0.9
    assert abs(poor.recall_estimate - recall(exact.ids, poor.ids)) < 0.08
    with pytest.warns(UserWarning, match="raise index.nprobe"):
        DETECTORS.create("kdist", {"index": {"kind": "ivf", "pca_dim": 8, "nlist": 512, "nprobe": 1}}).score(
            ScanContext(corpus_from_vectors(planted.vectors)), "model")


def test_ivf_self_join_excludes_self_and_partner() -> None:
    x = planted_embeddings(PlantedSpec(n=3000, dim=64, latent_dim=16, seed=5)).vectors
    both = np.concatenate([x, x])  # each vector twice: its copy is its "partner" (the pair's other modality)
    partner = np.concatenate([np.arange(3000, 6000), np.arange(3000)])
    result = self_knn(both, 6, IndexParams(kind="ivf", pca_dim=16, nlist=32, nprobe=8), partner=partner)
    rows = np.arange(6000)[:, None]
    assert not (result.ids == rows).any() and not (result.ids == partner[:, None]).any()
    assert (result.dist[:, 0] > 1e-3).all()  # the identical copy was excluded


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_the_kth_distance_alone_is_the_kth_column_of_the_lists(tmp_path, kind: str) -> None:
    """Same floats and the same recall check without the (n, k) lists, from a memory map too (whose IVF
    candidates are gathered a block at a time), with a partner excluded."""
    x = planted_embeddings(PlantedSpec(n=6000, dim=32, latent_dim=8, tight_cluster=20, seed=6)).vectors
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    partner = np.where(np.arange(6000) % 2 == 0, np.arange(6000) + 1, np.arange(6000) - 1)
    params = IndexParams(kind=kind, pca_dim=16, nlist=64, nprobe=4, chunk=1000, check_queries=300)
    lists = self_knn(x, 8, params, partner=partner)
    kth = self_kth_distance(mapped, 8, params, partner=partner)
    assert kth.dist.shape == (6000, 1) and kth.ids.shape == (6000, 0)
    np.testing.assert_array_equal(kth.dist[:, 0], lists.dist[:, 7])
    assert kth.recall_estimate == lists.recall_estimate and (kind == "exact") == (kth.recall_estimate is None)


def test_a_scan_keeps_neighbour_lists_only_when_a_detector_reads_them(planted) -> None:
    """kdist alone gets its k-distances without lists; beside slof on the same neighbourhood it reads the
    shared lists; either way its scores are the same bytes."""
    index = {"kind": "ivf", "pca_dim": 32, "nprobe": 16}
    alone, shared = (ScanContext(corpus_from_vectors(planted.vectors)) for _ in range(2))
    kdist = DETECTORS.create("kdist", {"k": 12, "index": index})
    slof = DETECTORS.create("slof", {"k": 12, "index": index})
    kdist.plan(alone, "model")
    kdist.plan(shared, "model")
    slof.plan(shared, "model")
    by_alone, by_shared = kdist.score(alone, "model"), kdist.score(shared, "model")
    slof.score(shared, "model")
    assert [info.get("kth_only", False) for info in alone.graph_info.values()] == [True]
    assert [info.get("kth_only", False) for info in shared.graph_info.values()] == [False]
    assert not alone.graphs and len(shared.graphs) == 1
    assert by_alone.tobytes() == by_shared.tobytes()


def test_auto_choice_and_list_count() -> None:
    assert resolve_kind(10_000, IndexParams()) == "exact"
    assert resolve_kind(2_000_000, IndexParams(gpu=False)) == "ivf"
    assert auto_nlist(1_000_000) == 2048 and auto_nlist(100_000) == 512
    assert auto_nprobe(100_000) == 8 and auto_nprobe(1_000_000) == 4
    with pytest.raises(ValueError, match="cannot each have"):
        self_knn(np.eye(5, dtype=np.float32), 5)


def test_similar_pairs_exact_and_through_the_ivf() -> None:
    rng = np.random.default_rng(3)
    x = planted_embeddings(PlantedSpec(n=6000, dim=64, latent_dim=16, seed=6)).vectors.copy()
    for start in (100, 2000, 4000):  # three images repeated 12 times with small changes
        x[start:start + 12] = x[start] + 0.01 * rng.standard_normal((12, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    i, j = np.nonzero(np.triu(sims >= 0.98, k=1))
    expected = set(zip(i.tolist(), j.tolist(), strict=True))
    for params in (IndexParams(kind="exact"), IndexParams(kind="ivf", pca_dim=16, nlist=64, nprobe=4)):
        a, b = similar_pairs(x, 0.98, params)
        assert set(zip(a.tolist(), b.tolist(), strict=True)) == expected, params.kind
    assert len(expected) >= 3 * 66


@pytest.mark.skipif(gpu_count() == 0, reason="needs faiss-gpu and a GPU")
def test_gpu_exact_search_matches_cpu(planted) -> None:  # pragma: no cover - no GPU here
    cpu = self_knn(planted.vectors, 16, IndexParams(kind="exact", gpu=False))
    gpu = self_knn(planted.vectors, 16, IndexParams(kind="exact", gpu=True))
    assert recall(cpu.ids, gpu.ids) > 0.999
