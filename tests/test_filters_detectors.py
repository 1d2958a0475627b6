"""Detectors on synthetic embeddings with planted structure, checked against brute-force numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from poisonlab.filters.context import ScanContext
from poisonlab.filters.corpus import Corpus, ModelView
from poisonlab.filters.detectors import DETECTORS, normalise_caption
from poisonlab.filters.outliers import dao, k_distance, lid_mle, lid_mom, slof
from poisonlab.filters.store import StoreInfo
from poisonlab.filters.synthetic import PlantedSpec, planted_embeddings
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.registry import RegistryError

INFO = StoreInfo("test", "none", {"image": 0, "text": 0}, "float32", "/nowhere")


def make_corpus(image: np.ndarray, text: np.ndarray | None = None, captions: list[str] | None = None,
                image_ok: np.ndarray | None = None, reasons: list[str] | None = None,
                hash_status: list[str] | None = None, source_status: list[str] | None = None) -> Corpus:
    n = len(image)
    text = image if text is None else text
    view = ModelView(INFO, {"image": image.astype(np.float32), "text": text.astype(np.float32)},
                     {"image": np.ones(n, bool) if image_ok is None else image_ok, "text": np.ones(n, bool)})
    return Corpus(keys=[f"{i:09d}" for i in range(n)], captions=captions or [f"caption {i}" for i in range(n)],
                  shard_names=["00000"], shard_bounds=np.array([0, n]), live=np.ones(n, bool),
                  reasons=reasons or [""] * n, source_status=source_status or [""] * n,
                  hash_status=hash_status or [""] * n, models={"model": view}, primary="model")


def run(corpus: Corpus, name: str, **params) -> np.ndarray:
    return DETECTORS.create(name, params).score(ScanContext(corpus), "model")


def brute_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and ids of the k nearest other rows, by the definition (float64, full sort)."""
    x = x.astype(np.float64)
    d = np.sqrt(np.maximum(0.0, ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)))
    np.fill_diagonal(d, np.inf)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, axis=1), ids


def reference_scores(x: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """kdist, LID (MLE and MoM), SLOF and ln DAO written straight from their definitions."""
    d, ids = brute_knn(x, k)
    kd = d[:, k - 1]
    lid = np.array([-1.0 / np.mean(np.log(d[i] / kd[i])) for i in range(len(x))])
    mom = np.array([d[i].mean() / (kd[i] - d[i].mean()) for i in range(len(x))])
    slof_ref = np.array([np.mean([kd[i] / kd[o] for o in ids[i]]) for i in range(len(x))])
    dao_ref = np.array([np.log(np.mean([(kd[i] / kd[o]) ** lid[o] for o in ids[i]])) for i in range(len(x))])
    return {"kdist": kd, "lid": lid, "lid_mom": mom, "slof": slof_ref, "dao": dao_ref}


@pytest.fixture(scope="module")
def planted():
    return planted_embeddings(PlantedSpec(n=600, dim=32, latent_dim=8, clusters=6, tight_cluster=12,
                                          sparse_points=8, seed=3))


@pytest.mark.parametrize("k", [5, 16])
def test_knn_detectors_match_brute_force(planted, k: int) -> None:
    ref = reference_scores(planted.vectors, k)
    corpus = make_corpus(planted.vectors)
    for name, params, expected in [("kdist", {}, ref["kdist"]), ("lid", {}, ref["lid"]),
                                   ("lid", {"estimator": "mom"}, ref["lid_mom"]), ("slof", {}, ref["slof"]),
                                   ("dao", {}, ref["dao"])]:
        got = run(corpus, name, k=k, index={"kind": "exact"}, **params)
        # FAISS distances come from float32 inner products: LID (and DAO, which raises ratios to the LID)
        # amplify their ~1e-6 relative error when the k distances are nearly equal (LID ~ 70 here)
        atol = 1e-2 if name == "dao" else 2e-4
        np.testing.assert_allclose(got, expected, rtol=6e-3, atol=atol, err_msg=f"{name} {params}")


def test_outlier_functions_share_one_graph(planted) -> None:
    d, ids = brute_knn(planted.vectors, 10)
    kd = k_distance(d, 10)
    # the first k columns of a larger neighbour list are exactly the k nearest
    np.testing.assert_allclose(k_distance(d, 4), d[:, 3])
    np.testing.assert_allclose(slof(d, ids, 10, kd), reference_scores(planted.vectors, 10)["slof"], rtol=1e-9)
    assert np.all(np.isfinite(dao(d, ids, 10, kd, lid_mle(d, 10))))
    assert np.all(lid_mom(d, 10) > 0)


def test_dao_reference_code_aggregate_is_the_mean_log(planted) -> None:
    d, ids = brute_knn(planted.vectors, 8)
    kd, lid = k_distance(d, 8), lid_mle(d, 8)
    expected = np.array([np.mean([lid[o] * np.log(kd[i] / kd[o]) for o in ids[i]]) for i in range(len(kd))])
    np.testing.assert_allclose(dao(d, ids, 8, kd, lid, "mean_log"), expected, rtol=1e-9)
    # the paper's power mean is at least the geometric mean (Jensen), hence >= the reference code's score
    assert np.all(dao(d, ids, 8, kd, lid) >= expected - 1e-9)


def test_planted_sparse_points_are_found_at_any_k(planted) -> None:
    corpus = make_corpus(planted.vectors)
    sparse_or_clean = planted.labels != 1
    sparse = planted.labels[sparse_or_clean] == 2
    for name in ("kdist", "slof", "dao"):
        for k in (5, 16):
            score = run(corpus, name, k=k, index={"kind": "exact"})[sparse_or_clean]
            assert roc_auc_score(sparse, score) > (0.97 if k == 16 else 0.9), (name, k)  # DAO is noisy at k=5


def test_tight_cluster_hides_below_its_size_and_shows_above_it(planted) -> None:
    """A trigger shared by more samples than k makes them each other's neighbours (the calibration note)."""
    corpus = make_corpus(planted.vectors)
    tight = planted.labels == 1
    clean_or_tight = planted.labels != 2
    small = run(corpus, "kdist", k=5, index={"kind": "exact"})
    large = run(corpus, "kdist", k=24, index={"kind": "exact"})  # the planted cluster has 12 members
    assert roc_auc_score(tight[clean_or_tight], small[clean_or_tight]) < 0.3
    assert roc_auc_score(tight[clean_or_tight], large[clean_or_tight]) > 0.97
    for name in ("slof", "dao"):
        score = run(corpus, name, k=24, index={"kind": "exact"})[clean_or_tight]
        assert roc_auc_score(tight[clean_or_tight], score) > 0.95, name


def test_cross_space_never_counts_a_pair_s_own_caption(planted) -> None:
    x = planted.vectors
    text = x.copy()  # every caption embedding equals its image: the own caption is always the nearest point
    corpus = make_corpus(x, text)
    got = run(corpus, "kdist", k=3, space="cross", index={"kind": "exact"})
    # references: every image and caption; excluding the own caption, the nearest are other pairs' image
    # and caption at equal distances, so the 3rd nearest other reference is the 2nd nearest other pair
    d, _ = brute_knn(x, 2)
    np.testing.assert_allclose(got, d[:, 1], rtol=1e-3, atol=1e-4)


def test_batch_local_uses_only_the_keyed_batch(planted) -> None:
    corpus = make_corpus(planted.vectors)
    k, batch_size = 8, 100
    got = run(corpus, "kdist", k=k, mode="batch_local", batch_size=batch_size, seed=5)
    order = sorted(range(len(corpus)), key=lambda r: keyed_u64(5, "filters/batch_local", corpus.keys[r]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    expected = np.empty(len(corpus))
    for batch in batches:
        d, _ = brute_knn(planted.vectors[batch], k)
        expected[batch] = d[:, k - 1]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    # a batch is a sample of the references: neighbours are never nearer than over the whole set
    assert np.all(got >= run(corpus, "kdist", k=k, index={"kind": "exact"}) - 1e-4)


def test_clip_score_is_one_minus_cosine_and_skips_missing_images() -> None:
    rng = np.random.default_rng(0)
    img = rng.standard_normal((50, 16)).astype(np.float32)
    txt = rng.standard_normal((50, 16)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    ok = np.ones(50, bool)
    ok[7] = False
    got = run(make_corpus(img, txt, image_ok=ok), "clip_score")
    expected = 1 - (img * txt).sum(1)
    assert np.isnan(got[7])
    np.testing.assert_allclose(np.delete(got, 7), np.delete(expected, 7), rtol=1e-5)


def test_knn_detectors_leave_rows_without_embeddings_unscored(planted) -> None:
    ok = np.ones(len(planted.vectors), bool)
    ok[[3, 99]] = False
    got = run(make_corpus(planted.vectors, image_ok=ok), "dao", k=5, index={"kind": "exact"})
    assert np.isnan(got[[3, 99]]).all() and np.isfinite(np.delete(got, [3, 99])).all()


def test_spectral_signature_matches_the_top_singular_direction(planted) -> None:
    x = planted.vectors.astype(np.float64)
    centred = x - x.mean(0)
    top = np.linalg.svd(centred, full_matrices=False)[2][0]
    np.testing.assert_allclose(run(make_corpus(planted.vectors), "spectral"), (centred @ top) ** 2, rtol=1e-3, atol=1e-6)


def test_isolation_forest_ranks_sparse_points_high(planted) -> None:
    score = run(make_corpus(planted.vectors), "isolation_forest", seed=1)
    assert roc_auc_score(planted.labels == 2, score) > 0.9


def test_caption_frequency_flags_repeated_captions_and_their_near_duplicates() -> None:
    rng = np.random.default_rng(1)
    n = 300
    captions = [f"a unique caption number {i}" for i in range(n)]
    text = rng.standard_normal((n, 24)).astype(np.float32)
    target = rng.standard_normal(24).astype(np.float32)
    for i in range(0, 40, 2):  # 20 exact repeats (modulo case and punctuation) of one target caption
        captions[i] = "A photo of a BANANA!" if i % 4 else "a photo of a banana"
        text[i] = target
    for i in range(1, 20, 2):  # 10 paraphrases whose text embeddings are near-duplicates of it
        captions[i] = f"banana photo variant {i}"
        text[i] = target + 0.01 * rng.standard_normal(24).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    corpus = make_corpus(text, text, captions=captions)
    exact_only = run(corpus, "caption_frequency", near_duplicate=None)
    merged = run(corpus, "caption_frequency", near_duplicate=0.95)
    assert normalise_caption("A photo of a BANANA!") == "a photo of a banana"
    assert exact_only[0] == pytest.approx(np.log2(20)) and exact_only[1] == pytest.approx(0.0)
    assert merged[0] == pytest.approx(np.log2(30)) and merged[1] == pytest.approx(np.log2(30))
    assert merged[100] == pytest.approx(0.0)


def test_image_duplicates_count_the_near_duplicate_cluster() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 32)).astype(np.float32)
    x[10:25] = x[10] + 0.005 * rng.standard_normal((15, 32)).astype(np.float32)  # one image repeated 15 times
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    got = run(make_corpus(x), "image_duplicates", threshold=0.99)
    sims = x @ x.T
    np.fill_diagonal(sims, 0)
    assert np.all(got[10:25] == 14) and np.all(got[:10] == 0) and got.sum() == 15 * 14
    assert (sims[:10] < 0.99).all()


def test_hash_mismatch_reads_every_way_ingest_records_it() -> None:
    x = np.eye(4, dtype=np.float32)
    corpus = make_corpus(x, reasons=["", "not_live: failed_to_download: hash mismatch", "", ""],
                         hash_status=["", "", "mismatch", "match"], source_status=["hash_mismatch", "", "", ""])
    assert run(corpus, "hash_mismatch").tolist() == [1.0, 1.0, 1.0, 0.0]


def test_ensemble_rank_mean_and_max() -> None:
    ctx = ScanContext(make_corpus(np.eye(4, dtype=np.float32)))
    ctx.columns = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([40.0, 30.0, np.nan, 10.0])}
    mean = DETECTORS.create("ensemble", {"detectors": ["a", "b"]}).score(ctx, "model")
    biggest = DETECTORS.create("ensemble", {"detectors": ["a", "b"], "method": "rank_max"}).score(ctx, "model")
    np.testing.assert_allclose(mean, [(0.25 + 1) / 2, (0.5 + 2 / 3) / 2, 0.75, (1 + 1 / 3) / 2])
    np.testing.assert_allclose(biggest, [1.0, 2 / 3, 0.75, 1.0])


def test_unknown_detector_and_bad_parameters_are_refused() -> None:
    with pytest.raises(RegistryError, match="unknown detector"):
        DETECTORS.get("kdistance")
    with pytest.raises(RegistryError, match="unknown parameter"):
        DETECTORS.create("kdist", {"neighbours": 3})
    with pytest.raises(RegistryError):
        DETECTORS.create("kdist", {"space": "audio"})
