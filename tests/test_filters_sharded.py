"""Memory-bounded neighbour search: the budget chooser, the exact merge, index shards in-process and on a
loopback Dask cluster (the same neighbours as one exact index, or recall >= 0.95 with compressed codes)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from poisonlab.filters.budget import choose_plan, estimate_bytes, parse_bytes, split_rows
from poisonlab.filters.context import ScanContext
from poisonlab.filters.corpus import corpus_from_vectors
from poisonlab.filters.detectors import DETECTORS
from poisonlab.filters.index import IndexParams, self_knn
from poisonlab.filters.knn_merge import drop_excluded, merge_topk
from poisonlab.filters.synthetic import PlantedSpec, planted_embeddings
from poisonlab.filters.vectors import ArraySource, save_source

MiB = 1024**2


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float((truth[:, :, None] == found[:, None, :]).any(axis=2).mean())


def same_neighbours(a, b) -> None:  # type: ignore[no-untyped-def]
    """The same neighbour set per row, at the same distances (rows may order exact ties differently)."""
    assert (np.sort(a.ids, axis=1) == np.sort(b.ids, axis=1)).all()
    np.testing.assert_allclose(a.dist, b.dist, atol=1e-5)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return planted_embeddings(PlantedSpec(n=3000, dim=64, latent_dim=16, tight_cluster=20, seed=5)).vectors


@pytest.fixture(scope="module")
def exact(vectors):
    return self_knn(vectors, 10, IndexParams(kind="exact"))


# --- the merge -------------------------------------------------------------------------------------------


def test_merge_keeps_the_k_smallest_with_ties_by_row_id_in_any_order() -> None:
    parts = [
        (np.array([[0.1, 0.3, np.inf]], np.float32), np.array([[7, 2, -1]])),  # a short shard, padded
        (np.array([[0.3, 0.3, 0.5]], np.float32), np.array([[9, 1, 4]])),
        (np.array([[0.05, 0.3, 0.6]], np.float32), np.array([[12, 0, 3]])),
    ]
    expected_d = np.array([[0.05, 0.1, 0.3, 0.3, 0.3, 0.3]], np.float32)
    expected_i = np.array([[12, 7, 0, 1, 2, 9]])  # four ties at 0.3: by row id
    for order in itertools.permutations(parts):
        d, i = merge_topk([p[0] for p in order], [p[1] for p in order], 6)
        np.testing.assert_array_equal(d, expected_d)
        np.testing.assert_array_equal(i, expected_i)
    running = merge_topk([parts[0][0]], [parts[0][1]], 6)  # one by one into a running result: the same
    for dist, ids in parts[1:]:
        running = merge_topk([running[0], dist], [running[1], ids], 6)
    np.testing.assert_array_equal(running[1], expected_i)


def test_merge_pads_missing_slots_last_and_drops_self_and_partner() -> None:
    d, i = merge_topk([np.array([[np.inf, 0.2]], np.float32)], [np.array([[-1, 5]])], 3)
    np.testing.assert_array_equal(i, [[5, -1, -1]])
    assert np.isinf(d[0, 1:]).all()
    dist = np.array([[0.0, 0.1, 0.2, 0.3]], np.float32)
    kept_d, kept_i, short = drop_excluded(dist, np.array([[4, 9, 2, 6]]), np.array([4]), np.array([0, 0, 0, 0, 9]), 2)
    np.testing.assert_array_equal(kept_i, [[2, 6]])
    assert not short.any()


# --- the budget chooser --------------------------------------------------------------------------------


def test_parse_bytes() -> None:
    assert parse_bytes("4GiB") == 4 * 1024**3 and parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1.5 KiB") == 1536 and parse_bytes(1000) == 1000 and parse_bytes(None) is None
    for bad in ("lots", "-3GiB", "0"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="memory size"):
        IndexParams(memory="lots")


def test_the_chooser_takes_the_best_codes_that_fit() -> None:
    n, d = 100_000, 512
    flat = n * d * 4
    assert choose_plan(n, d, flat + 1, pca_dim=64).codes == "flat"
    sq8 = choose_plan(n, d, flat // 2, pca_dim=64)
    assert (sq8.codes, sq8.code_dim, len(sq8.shards), sq8.refine) == ("sq8", 64, 1, "source")
    roomy = choose_plan(n, d, flat + 20 * MiB, codes="sq8", pca_dim=64)
    assert roomy.refine == "memory"  # the exact vectors fit next to the codes: refine from them
    pq = choose_plan(n, d, 5 * MiB, pca_dim=64)  # SQ8 needs 6.9 MiB
    assert pq.codes == "pq" and len(pq.shards) == 1 and pq.pq_m == 32 and pq.bytes_per_shard <= 5 * MiB
    sharded = choose_plan(n, d, 1 * MiB, pca_dim=64)  # not even 4-byte PQ fits: SQ8 index shards
    assert sharded.codes == "sq8" and len(sharded.shards) >= 2 and sharded.bytes_per_shard <= MiB
    assert sharded.shards == split_rows(n, len(sharded.shards))
    forced = choose_plan(n, d, flat // 3, codes="flat")
    assert len(forced.shards) == 4 and forced.bytes_per_shard == estimate_bytes("flat", 25_000, d, d, 0, False)
    with pytest.raises(ValueError, match="raise the index memory"):
        choose_plan(n, d, 1000)


def test_shards_are_contiguous_and_cover_every_row() -> None:
    ranges = split_rows(10, 3)
    assert ranges == ((0, 3), (3, 7), (7, 10))


# --- sharded search in this process ----------------------------------------------------------------------


def test_flat_index_shards_give_the_exact_neighbours(vectors, exact) -> None:
    result = self_knn(vectors, 10, IndexParams(memory="300KiB", codes="flat"))
    assert result.plan["shards"] >= 2 and result.kind == "flat"
    same_neighbours(result, exact)


def test_flat_index_shards_exclude_partners(vectors) -> None:
    both = np.concatenate([vectors[:1500], vectors[:1500]])
    partner = np.concatenate([np.arange(1500, 3000), np.arange(1500)])
    single = self_knn(both, 6, IndexParams(kind="exact"), partner=partner)
    sharded = self_knn(both, 6, IndexParams(memory="300KiB", codes="flat"), partner=partner)
    assert sharded.plan["shards"] >= 2
    same_neighbours(sharded, single)
    assert not (sharded.ids == partner[:, None]).any()


def test_compressed_index_shards_keep_recall(vectors, exact) -> None:
    for codes, memory in (("sq8", "90KiB"), ("pq", "80KiB")):
        result = self_knn(vectors, 10, IndexParams(memory=memory, codes=codes, pca_dim=32, nprobe=16))
        assert result.plan["shards"] >= 2, result.plan
        measured = recall(exact.ids, result.ids)
        assert measured >= 0.95, (codes, measured)
        assert abs(result.recall_estimate - measured) < 0.05


def test_detector_aurocs_under_a_budget_match_the_exact_index() -> None:
    planted = planted_embeddings(PlantedSpec(n=8000, dim=64, latent_dim=16, tight_cluster=10, sparse_points=30, seed=4))
    budget = {"memory": "200KiB", "codes": "sq8", "pca_dim": 32, "nprobe": 16}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for label, index in (("exact", {"kind": "exact"}), ("budget", budget)):
        ctx = ScanContext(corpus_from_vectors(planted.vectors))  # one graph per context, shared by the detectors
        scores[label] = {name: DETECTORS.create(name, {"k": 16, "index": index}).score(ctx, "model")
                         for name in ("kdist", "slof", "dao")}
        info = next(iter(ctx.graph_info.values()))
    assert info["plan"]["shards"] >= 2 and info["recall_estimate"] >= 0.95
    for name in ("kdist", "slof", "dao"):
        a, e = (roc_auc_score(planted.positives, scores[x][name]) for x in ("budget", "exact"))
        assert abs(a - e) <= 0.01, (name, a, e)


# --- on a loopback Dask cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(dask_cluster):
    from dask_cluster import address_of
    from distributed import Client

    with Client(address_of(dask_cluster), timeout=60) as c:
        yield c


def test_index_shards_on_dask_workers_match_the_single_index(client, vectors, exact, tmp_path) -> None:
    from poisonlab.flows.knn_dask import DaskShards

    runner = DaskShards(client, scratch=tmp_path)
    flat = IndexParams(memory="300KiB", codes="flat")
    on_dask = self_knn(vectors, 10, flat, runner=runner)
    assert on_dask.plan["shards"] >= 2
    same_neighbours(on_dask, exact)
    in_process = self_knn(vectors, 10, flat)
    np.testing.assert_array_equal(on_dask.ids, in_process.ids)  # bit for bit, whatever runs the shards
    np.testing.assert_array_equal(on_dask.dist, in_process.dist)
    sq8 = IndexParams(memory="90KiB", codes="sq8", pca_dim=32, nprobe=16)
    compressed = self_knn(vectors, 10, sq8, runner=runner)
    assert compressed.plan["shards"] >= 2 and recall(exact.ids, compressed.ids) >= 0.95
    np.testing.assert_array_equal(compressed.ids, self_knn(vectors, 10, sq8).ids)
    assert list(tmp_path.iterdir()) == []  # the vectors written for the workers are gone


def test_workers_read_a_vector_file_they_see(client, vectors, exact, tmp_path) -> None:
    from poisonlab.filters.index import budget_knn
    from poisonlab.flows.knn_dask import DaskShards

    source = save_source(vectors, tmp_path / "vectors.npy")
    result = budget_knn(source, 10, IndexParams(memory="300KiB", codes="flat"), runner=DaskShards(client))
    same_neighbours(result, exact)
    assert (tmp_path / "vectors.npy").exists()  # a file source is the caller's: left in place
    local = budget_knn(ArraySource(vectors), 10, IndexParams(memory="300KiB", codes="flat"))
    np.testing.assert_array_equal(result.ids, local.ids)


def vector_store(root, x: np.ndarray, per_shard: int = 1000):  # type: ignore[no-untyped-def]
    """An embedding store of given vectors (image = text), without a model."""
    from poisonlab.filters.store import ShardEmbeddings, StoreInfo, write_info, write_shard

    store = root / "emb"
    write_info(store, StoreInfo("given-vectors", "test", {"image": x.shape[1], "text": x.shape[1]}, "float32",
                                str(root / "shards")))
    for i, start in enumerate(range(0, len(x), per_shard)):
        part = x[start:start + per_shard]
        m, ones = len(part), np.ones(len(part), bool)
        write_shard(store, f"{i:05d}", ShardEmbeddings(
            keys=[f"{start + j:09d}" for j in range(m)], captions=[""] * m, vectors={"image": part, "text": part},
            ok={"image": ones, "text": ones}, live=ones, status=["ok"] * m, reasons=[""] * m, source_status=[""] * m,
            hash_status=[""] * m, digest="given"), "float32")
    return store


def test_scan_on_dask_records_the_plan_and_recall_and_scores_as_in_process(dask_cluster, vectors, tmp_path) -> None:
    from dask_cluster import address_of

    from poisonlab.flows.runtime import RunnerSpec
    from poisonlab.flows.sanitize import scan_folder

    store = vector_store(tmp_path, vectors)
    detectors = {"kdist": {"k": 10, "index": {"pca_dim": 32, "nprobe": 16}}, "dao": {"k": 10}}
    local = scan_folder(store, detectors, tmp_path / "local", index_memory="90KiB")
    remote = scan_folder(store, detectors, tmp_path / "remote", index_memory="90KiB",
                         runner=RunnerSpec(dask_address=address_of(dask_cluster)))
    graphs = json.loads((tmp_path / "remote" / "scan.json").read_text())["graphs"]
    plans = [g["plan"] for g in graphs.values()]
    assert all(p["shards"] >= 2 and p["budget"] == 90 * 1024 for p in plans), plans
    assert all(g["recall_estimate"] >= 0.95 for g in graphs.values() if g["plan"]["codes"] != "flat")
    assert remote["config"]["detectors"]["kdist"]["params"]["index"]["memory"] == "90KiB"
    for shard in ("00000", "00001", "00002"):
        assert (tmp_path / "local" / f"{shard}.parquet").read_bytes() == (tmp_path / "remote" / f"{shard}.parquet").read_bytes()
    assert local["graphs"] == remote["graphs"] or all(
        a["plan"] == b["plan"] for a, b in zip(local["graphs"].values(), remote["graphs"].values(), strict=True))


def test_cli_scan_takes_an_index_memory(cli, vectors, tmp_path) -> None:
    from conftest import one_line_error

    from poisonlab.flows.cli import app

    store = vector_store(tmp_path, vectors)
    res = cli.invoke(app, ["scan", str(store), "--out", str(tmp_path / "scores"), "--index-memory", "300KiB",
                           "--detector", "kdist:k=10,index.codes=flat", "--json"])
    assert res.exit_code == 0, res.output
    (graph,) = json.loads(res.stdout)["graphs"].values()
    assert graph["plan"]["codes"] == "flat" and graph["plan"]["shards"] >= 2 and graph["index"] == "flat"
    bad = cli.invoke(app, ["scan", str(store), "--out", str(tmp_path / "bad"), "--index-memory", "lots"])
    one_line_error(bad, "memory size")
