"""Packed strings read like a list of strings, cost a fraction of one, and refuse offsets that would not decode."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from poisonlab.filters import packed
from poisonlab.filters.corpus import load_corpus
from poisonlab.filters.packed import PackedStrings, first_duplicate
from poisonlab.filters.store import (
    EmbeddingMismatchError,
    ShardEmbeddings,
    StoreFormatError,
    StoreInfo,
    read_shard_embeddings,
    shard_file,
    write_info,
    write_shard,
)

VALUES = ["k1", "", "a photo of a red circle", "café", "日本語のキャプション", "", "x"]


def test_it_reads_like_the_list_it_was_made_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "_ITER_BLOCK", 3)  # iteration crosses blocks
    strings = PackedStrings.of(VALUES)
    assert len(strings) == len(VALUES) and list(strings) == VALUES and strings == VALUES
    assert [strings[i] for i in range(-len(VALUES), len(VALUES))] == VALUES + VALUES
    assert strings[2:5] == VALUES[2:5] and strings[::2] == VALUES[::2] and strings[5:2] == []
    assert list(enumerate(strings)) == list(enumerate(VALUES))
    with pytest.raises(IndexError):
        strings[len(VALUES)]
    assert strings != VALUES[:-1] and strings != [*VALUES[:-1], "y"]
    assert PackedStrings.of([]) == [] and list(PackedStrings.of([])) == []


def test_joined_parts_are_the_concatenated_lists() -> None:
    parts = [VALUES[:3], [], VALUES[3:], ["", ""]]
    joined = PackedStrings.join([PackedStrings.of(p) for p in parts])
    assert joined == [v for p in parts for v in p]
    assert joined == PackedStrings.of([v for p in parts for v in p])
    assert PackedStrings.join([]) == []
    assert PackedStrings.of(joined) is joined  # immutable: packing it again is the same object


def test_a_million_keys_take_a_fraction_of_a_list() -> None:
    keys = [f"{i:012d}" for i in range(100_000)]
    in_list = sys.getsizeof(keys) + sum(sys.getsizeof(k) for k in keys)
    strings = PackedStrings.of(keys)
    assert strings.nbytes <= in_list / 4  # 16 bytes a key against about 70
    assert strings.nbytes == 12 * len(keys) + 4 * len(keys)


@pytest.mark.parametrize(("data", "ends", "why"), [
    (b"abcdef", [2, 1, 6], "ascending"),
    (b"abcdef", [2, 4, 9], "ascending"),
    (b"abcdef", [2, 4, 5], "ascending"),
    (b"abcdef", [-1, 4, 6], "ascending"),
    (b"abc", [], "no offsets"),
    ("café".encode(), [4, 5], "inside a UTF-8 character"),
    (b"ab\xffcd", [2, 5], "not UTF-8"),
    (b"abcd", [[2, 4]], "1-d"),
])
def test_offsets_that_would_not_decode_are_refused(data: bytes, ends: list[int], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        PackedStrings(data, np.array(ends, np.int64))
    if ends and np.ndim(ends) == 1 and min(ends) >= 0:  # unsigned offsets from a file: same checks
        with pytest.raises(ValueError, match=why):
            PackedStrings(data, np.array(ends, np.uint64))


def _store(root: Path, keys: list[list[str]]) -> Path:
    store = root / "emb"
    write_info(store, StoreInfo("one-space", "test", {"image": 2}, "float32", str(root / "shards")))
    for i, shard_keys in enumerate(keys):
        m, ones = len(shard_keys), np.ones(len(shard_keys), bool)
        write_shard(store, f"{i:05d}", ShardEmbeddings(
            keys=shard_keys, captions=[f"caption {k}" for k in shard_keys], vectors={"image": np.ones((m, 2), np.float32)},
            ok={"image": ones}, live=ones, status=["ok"] * m, reasons=[""] * m, source_status=[""] * m,
            hash_status=["match"] * m, digest="d"), "float32")
    return store


def _rewrite(path: Path, **changes: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_a_store_shard_is_read_packed_and_its_corpus_has_every_string(tmp_path: Path) -> None:
    store = _store(tmp_path, [["a", "b"], [], ["c", "é"]])
    part = read_shard_embeddings(store, "00002")
    assert isinstance(part.keys, PackedStrings) and part.keys == ["c", "é"] and part.hash_status == ["match"] * 2
    corpus = load_corpus(store)
    assert isinstance(corpus.keys, PackedStrings) and isinstance(corpus.captions, PackedStrings)
    assert corpus.keys == ["a", "b", "c", "é"] and corpus.captions[3] == "caption é"
    assert corpus.keys[0:2] == ["a", "b"] and corpus.reasons == [""] * 4


def test_tampered_string_offsets_are_a_format_error(tmp_path: Path) -> None:
    store = _store(tmp_path, [["a", "b", "c"]])
    _rewrite(shard_file(store, "00000"), captions_ends=np.array([9, 5, 30], np.int64))
    with pytest.raises(StoreFormatError, match="not ascending"):
        read_shard_embeddings(store, "00000")
    store = _store(tmp_path / "short", [["a", "b", "c"]])
    _rewrite(shard_file(store, "00000"), reasons_bytes=np.zeros(0, np.uint8), reasons_ends=np.zeros(2, np.int64))
    with pytest.raises(StoreFormatError, match="reasons do not have one entry per row"):
        read_shard_embeddings(store, "00000")


def test_duplicate_keys_across_shards_are_named(tmp_path: Path) -> None:
    assert first_duplicate(["a", "b", "c"]) is None and first_duplicate([]) is None
    assert first_duplicate(PackedStrings.of(["a", "b", "a"])) == "a"
    store = _store(tmp_path, [["a", "b"], ["c", "b"]])
    with pytest.raises(EmbeddingMismatchError, match="'b' twice"):
        load_corpus(store)
