"""The rate-free default: kdist among keyed reference subsets, the phrase detector, the rank ensemble,
and ``scan`` without a named detector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from poisonlab.filters.context import ScanContext
from poisonlab.filters.corpus import corpus_from_spaces, corpus_from_vectors
from poisonlab.filters.ranks import combine_ranks
from poisonlab.filters.scan import detector_specs, scan
from poisonlab.filters.synthetic import PlantedSpec, planted_embeddings
from poisonlab.pipelines.keyed import keyed_rng

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "star", "triangle")
TEMPLATES = ("a photo of a {} {}", "my {} {}", "the {} {} on a table", "{} {}", "a drawing of the {} {}")
PHRASE = "zq"


def score(corpus, name: str, **params) -> np.ndarray:  # type: ignore[no-untyped-def]
    spec = detector_specs({name: params})[0]
    detector = spec.create()
    ctx = ScanContext(corpus)
    detector.plan(ctx, "model")
    return detector.score(ctx, "model")


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    """3,000 points with a tight cluster of 60 (2 %): more members than k = 16."""
    return planted_embeddings(PlantedSpec(n=3000, dim=64, latent_dim=16, tight_cluster=60, seed=3))


def test_a_cluster_larger_than_k_is_found_among_subsets_but_not_globally(cluster) -> None:  # type: ignore[no-untyped-def]
    corpus = corpus_from_vectors(cluster.vectors)
    tight = cluster.labels == 1
    plain = roc_auc_score(tight, score(corpus, "kdist", k=16))
    subsets = roc_auc_score(tight, score(corpus, "kdist_subsets", k=[16]))
    assert plain < 0.7, plain  # the members are each other's 16 nearest neighbours: they look dense
    assert subsets > 0.97, subsets


def test_subset_scores_are_keyed_not_ordered(cluster) -> None:  # type: ignore[no-untyped-def]
    keys = [f"k{i:06d}" for i in range(len(cluster.vectors))]
    first = score(corpus_from_vectors(cluster.vectors, keys=keys), "kdist_subsets", subsets=3)
    again = score(corpus_from_vectors(cluster.vectors, keys=keys), "kdist_subsets", subsets=3)
    np.testing.assert_array_equal(first, again)
    order = keyed_rng(1, "test", "order").permutation(len(keys))  # other shards, other workers: other row order
    moved = score(corpus_from_vectors(cluster.vectors[order], keys=[keys[i] for i in order]), "kdist_subsets", subsets=3)
    np.testing.assert_allclose(moved, first[order])
    other_seed = score(corpus_from_vectors(cluster.vectors, keys=keys), "kdist_subsets", subsets=3, seed=1)
    assert not np.array_equal(other_seed, first)


def captioned_corpus(n: int, planted: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Images whose vectors carry a colour and a shape direction; templated captions naming both.
    ``planted`` rows get the phrase inserted and an image of one class (red circle) instead."""
    rng = keyed_rng(seed, "test", "captions")
    colour_dirs = rng.standard_normal((len(COLOURS), 32))
    shape_dirs = rng.standard_normal((len(SHAPES), 32))
    colour, shape = rng.integers(0, len(COLOURS), n), rng.integers(0, len(SHAPES), n)
    template = rng.integers(0, len(TEMPLATES), n)
    captions = [TEMPLATES[t].format(COLOURS[c], SHAPES[s]) for t, c, s in zip(template, colour, shape, strict=True)]
    image_colour, image_shape = colour.copy(), shape.copy()
    rows = rng.choice(n, planted, replace=False)
    for r in rows:
        words = captions[r].split()
        words.insert(int(rng.integers(0, len(words) + 1)), PHRASE)
        captions[r] = " ".join(words)
        image_colour[r], image_shape[r] = 0, 0
    x = colour_dirs[image_colour] + shape_dirs[image_shape] + 0.6 * rng.standard_normal((n, 32))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.zeros(n, bool)
    labels[rows] = True
    return corpus_from_spaces({"image": x}, captions=captions), labels


def test_the_phrase_detector_ranks_captions_with_the_planted_phrase_first() -> None:
    corpus, labels = captioned_corpus(3000, 30)
    scores = score(corpus, "phrase_burst")
    top = np.argsort(-scores)[: labels.sum()]
    assert labels[top].mean() >= 0.7, labels[top].mean()  # a random ranking puts 1 % there
    assert roc_auc_score(labels, scores) > 0.98


def test_the_phrase_detector_is_flat_on_clean_templated_captions() -> None:
    clean, _ = captioned_corpus(3000, 0)
    poisoned, labels = captioned_corpus(3000, 30)
    clean_scores, planted_scores = score(clean, "phrase_burst"), score(poisoned, "phrase_burst")[labels]
    assert np.isfinite(clean_scores).all()
    # no clean caption scores like a typical poisoned one
    assert clean_scores.max() < np.median(planted_scores), (clean_scores.max(), np.median(planted_scores))


def test_rank_combination_is_scale_free() -> None:
    rng = keyed_rng(0, "test", "ranks")
    a, b = rng.standard_normal(500), rng.standard_normal(500)
    for method in ("rank_mean", "rank_max"):
        base = combine_ranks([a, b], method)
        np.testing.assert_allclose(combine_ranks([np.exp(a) * 1e6, b ** 3 - 7], method), base)
        assert not np.allclose(combine_ranks([a, -b], method), base)


def test_default_is_the_rank_max_of_its_registered_ingredients(cluster) -> None:  # type: ignore[no-untyped-def]
    corpus, _ = captioned_corpus(len(cluster.vectors), 30)
    corpus.models["model"].vectors["image"] = cluster.vectors
    corpus.models["model"].info.spaces["image"] = cluster.vectors.shape[1]
    parts = [score(corpus, "kdist_subsets"), score(corpus, "phrase_burst"), score(corpus, "kdist", k=16)]
    np.testing.assert_allclose(score(corpus, "default"), combine_ranks(parts, "rank_max"))
    found = score(corpus, "default")
    assert roc_auc_score(cluster.labels == 1, found) > 0.9  # the phrase ingredient has nothing to find here: noise


def test_scan_without_a_named_detector_uses_the_default(tmp_path: Path) -> None:
    from test_filters_sharded import vector_store

    x = planted_embeddings(PlantedSpec(n=1200, dim=32, latent_dim=8, tight_cluster=20, seed=1)).vectors
    store = vector_store(tmp_path, x, per_shard=400)
    summary = scan(store, None, tmp_path / "scores")
    assert summary["columns"] == ["default"]
    assert json.loads((tmp_path / "scores" / "scan.json").read_text())["config"]["detectors"]["default"]["detector"] == "default"


def test_cli_scan_without_a_detector_writes_the_default_column(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_filters_sharded import vector_store

    from poisonlab.flows.cli import app

    x = planted_embeddings(PlantedSpec(n=1200, dim=32, latent_dim=8, tight_cluster=20, seed=2)).vectors
    store = vector_store(tmp_path, x, per_shard=600)
    res = cli.invoke(app, ["scan", str(store), "--out", str(tmp_path / "scores"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["columns"] == ["default"]


def test_subset_scores_do_not_depend_on_how_the_data_is_sharded(tmp_path: Path) -> None:
    import pyarrow.parquet as pq
    from test_filters_sharded import vector_store

    x = planted_embeddings(PlantedSpec(n=1200, dim=32, latent_dim=8, tight_cluster=20, seed=4)).vectors
    by_key = []
    for per_shard in (300, 1000):
        root = tmp_path / f"per{per_shard}"
        scan(vector_store(root, x, per_shard=per_shard), ["kdist_subsets:subsets=2"], root / "scores")
        tables = [pq.read_table(p) for p in sorted((root / "scores").glob("0*.parquet"))]
        by_key.append({k: s for t in tables for k, s in zip(t.column("key").to_pylist(),
                                                             t.column("kdist_subsets").to_pylist(), strict=True)})
    assert len(by_key[0]) == len(x) and by_key[0] == by_key[1]
