"""Loading a store for a scan reads only the spaces the detectors read, into one array per space, and
keeps every row where it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from poisonlab.filters.corpus import load_corpus
from poisonlab.filters.index import IndexParams, knn_among, kth_among
from poisonlab.filters.outliers import k_distance
from poisonlab.filters.store import (
    EmbeddingMismatchError,
    ShardEmbeddings,
    StoreInfo,
    pack_strings,
    read_shard_embeddings,
    read_shard_rows,
    unpack_strings,
    write_info,
    write_shard,
)
from poisonlab.pipelines.keyed import keyed_rng


def _store(root: Path, sizes: list[int]) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = keyed_rng(0, "test", "store-loading")
    image = rng.standard_normal((sum(sizes), 8)).astype(np.float32)
    text = rng.standard_normal((sum(sizes), 4)).astype(np.float32)
    store = root / "emb"
    write_info(store, StoreInfo("two-spaces", "test", {"image": 8, "text": 4}, "float32", str(root / "shards")))
    start = 0
    for i, m in enumerate(sizes):
        ones, rows = np.ones(m, bool), slice(start, start + m)
        write_shard(store, f"{i:05d}", ShardEmbeddings(
            keys=[f"k{start + j:05d}" for j in range(m)], captions=[f"a caption, café {start + j}" for j in range(m)],
            vectors={"image": image[rows], "text": text[rows]}, ok={"image": ones, "text": ones}, live=ones,
            status=["ok"] * m, reasons=[""] * m, source_status=[""] * m, hash_status=[""] * m, digest="d"), "float32")
        start += m
    return store, image, text


def test_only_the_spaces_asked_for_are_read_and_every_mask_is(tmp_path: Path) -> None:
    store, image, _ = _store(tmp_path, [5, 0, 7])
    part = read_shard_embeddings(store, "00002", ["image"])
    assert list(part.vectors) == ["image"] and set(part.ok) == {"image", "text"}
    np.testing.assert_array_equal(part.vectors["image"], image[5:])
    assert [read_shard_rows(store, s) for s in ("00000", "00001", "00002")] == [5, 0, 7]
    corpus = load_corpus(store, {"model": ["image"]})
    assert list(corpus.model().vectors) == ["image"] and len(corpus) == 12
    np.testing.assert_array_equal(corpus.model().vectors["image"], image)
    assert corpus.captions[11] == "a caption, café 11" and list(corpus.shard_bounds) == [0, 5, 5, 12]
    both = load_corpus(store)
    assert set(both.model().vectors) == {"image", "text"}


def test_a_shard_of_another_width_is_refused(tmp_path: Path) -> None:
    store, _, _ = _store(tmp_path, [3])
    write_info(tmp_path / "wide", StoreInfo("two-spaces", "test", {"image": 16, "text": 4}, "float32",
                                            str(tmp_path / "shards")))
    (tmp_path / "wide" / "00000.npz").write_bytes((store / "00000.npz").read_bytes())
    with pytest.raises(EmbeddingMismatchError, match="8-d image embeddings"):
        load_corpus(tmp_path / "wide", {"model": ["image"]})


def test_strings_round_trip_ascii_or_not() -> None:
    for values in (["k1", "", "a photo of a red circle"], ["café", "", "x"], []):
        assert unpack_strings(*pack_strings(values)) == values


def test_kth_among_keeps_what_knn_among_finds() -> None:
    rng = keyed_rng(1, "test", "kth-among")
    x = rng.standard_normal((900, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    refs = np.arange(0, 900, 3)
    position = np.full(900, -1, np.int64)
    position[refs] = np.arange(len(refs))
    params = IndexParams(chunk=256)  # four search chunks
    dist, _ = knn_among(x, x[refs], position, 5, params)
    kth = kth_among(x, x[refs], position, 5, lambda d: k_distance(d, 5), params)
    np.testing.assert_array_equal(kth, k_distance(dist, 5))


def test_a_finished_scan_with_the_same_config_is_recognised_before_loading(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun (a resumed pipeline) costs the info files, not the store: at a million pairs loading it is
    most of a scan's memory and a minute of its time."""
    import poisonlab.filters.scan as scan_module

    store, _, _ = _store(tmp_path, [6, 6])
    out = tmp_path / "scores"
    first = scan_module.scan(store, ["kdist:k=2"], out)
    tables = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the store was loaded")

    monkeypatch.setattr(scan_module, "load_corpus", no_loading)
    again = scan_module.scan(store, ["kdist:k=2"], out)
    assert again["skipped"] and again["config"] == first["config"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == tables
    with pytest.raises(FileExistsError, match="other stores or detectors"):
        scan_module.scan(store, ["kdist:k=3"], out)


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = keyed_rng(seed, "test", "spill").standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_spilled_corpus_holds_the_same_vectors_in_a_read_only_map(tmp_path: Path) -> None:
    store, image, text = _store(tmp_path, [5, 0, 7])
    spilled = load_corpus(store, spill=tmp_path / "spill")
    view = spilled.model()
    assert all(isinstance(v, np.memmap) for v in view.vectors.values())
    np.testing.assert_array_equal(view.vectors["image"], image)
    np.testing.assert_array_equal(view.vectors["text"], text)
    assert len(list((tmp_path / "spill").glob("*.npy"))) == 2
    with pytest.raises(ValueError, match="read-only"):
        view.vectors["image"][0, 0] = 1.0  # no detector can change what the next one reads


def test_an_empty_store_spills_nothing(tmp_path: Path) -> None:
    store, _, _ = _store(tmp_path, [0])
    corpus = load_corpus(store, spill=tmp_path / "spill")
    assert len(corpus) == 0 and not list((tmp_path / "spill").glob("*.npy"))


def test_take_rows_from_a_map_is_fancy_indexing_in_any_order(tmp_path: Path) -> None:
    from poisonlab.filters.vectors import take_rows

    x = _unit(5000, 32, 2)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = keyed_rng(3, "test", "take").permutation(5000)[:3000]
    rows[:10] = rows[0]  # repeated rows too
    for source in (mapped, np.ascontiguousarray(mapped), x):
        np.testing.assert_array_equal(take_rows(source, rows), x[rows])
    assert take_rows(mapped, rows[:0]).shape == (0, 32)


def test_detectors_score_a_spilled_corpus_byte_for_byte_as_one_in_memory(tmp_path: Path) -> None:
    """What a scan computes does not depend on where its vectors are: the IVF (its projection read block by
    block), the keyed subsets (their queries gathered from the map) and the phrase statistics."""
    from poisonlab.filters.context import ScanContext
    from poisonlab.filters.scan import detector_specs

    n = 3000
    image, text = _unit(n, 24, 4), _unit(n, 24, 5)
    store = tmp_path / "emb"
    write_info(store, StoreInfo("spill", "test", {"image": 24, "text": 24}, "float32", str(tmp_path / "shards")))
    words = ["red", "green", "blue", "circle", "square", "cf"]
    for i in range(3):
        rows, ones = slice(i * 1000, (i + 1) * 1000), np.ones(1000, bool)
        write_shard(store, f"{i:05d}", ShardEmbeddings(
            keys=[f"k{j:05d}" for j in range(i * 1000, (i + 1) * 1000)],
            captions=[f"a {words[j % 6]} {words[(j // 6) % 6]}" for j in range(i * 1000, (i + 1) * 1000)],
            vectors={"image": image[rows], "text": text[rows]}, ok={"image": ones, "text": ones}, live=ones,
            status=["ok"] * 1000, reasons=[""] * 1000, source_status=[""] * 1000, hash_status=[""] * 1000,
            digest="d"), "float32")
    detectors = ["kdist_subsets", "phrase_burst", "kdist:k=8,index.exact_max=100,index.chunk=512,index.nprobe=32",
                 "slof:k=8,index.kind=exact"]
    columns = []
    for spill in (None, tmp_path / "spill"):
        ctx = ScanContext(load_corpus(store, spill=spill))
        specs = detector_specs(detectors)
        for spec in specs:
            spec.create().plan(ctx, "model")
        columns.append({s.column: spec_score for s in specs for spec_score in [s.create().score(ctx, "model")]})
    assert columns[0].keys() == columns[1].keys()
    for column, values in columns[0].items():
        assert values.tobytes() == columns[1][column].tobytes(), column
