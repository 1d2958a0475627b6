"""All embeddings of a dataset, row-aligned across shards and models, for the global detectors: in memory, or
spilled to a folder and memory-mapped (``load_corpus(..., spill=)``, what ``scan`` does).

Each store holds named spaces (``image``, ``text``, ``graph``, ...) with their own dimensions; a reader
asks ``ModelView.space(name)`` and a missing space is a one-line error naming the spaces there are.
Rows are in shard order, then in the order the embed step saw the samples, so a shard's rows are one
contiguous slice and score tables are written shard by shard. Only the spaces a scan's detectors read are
held (``load_corpus(..., spaces=)``; every space's mask is kept for the score tables), and each shard's
arrays are released as they are joined, so loading never holds a space twice. A second model's store (a reference model
for CLIP-score next to the victim model for kNN detectors) must hold exactly the same keys in the same
order: anything else is a model/shard mismatch and is refused.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from poisonlab.filters.packed import PackedStrings, first_duplicate
from poisonlab.filters.store import (
    REEMBED,
    EmbeddingMismatchError,
    MissingSpaceError,
    ShardEmbeddings,
    StoreInfo,
    list_store_shards,
    read_info,
    read_shard_embeddings,
    read_shard_rows,
)
from poisonlab.filters.vectors import release_pages


@dataclasses.dataclass
class ModelView:
    """One store's embeddings of the corpus rows, by named space."""

    info: StoreInfo
    vectors: dict[str, np.ndarray]  # loaded space -> (n, d) float32, zero rows where that space's ok is False
    ok: dict[str, np.ndarray]  # every stored space -> bool (n,)

    @property
    def spaces(self) -> list[str]:
        return list(self.ok)

    def space(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and mask of one space; a space the store lacks is a one-line error saying what to do."""
        name = self.info.resolve(name)
        self.info.require([name], "this scan", self.info.model_id)
        if name not in self.vectors:
            raise MissingSpaceError(f"the space {name!r} of {self.info.model_id} was not loaded: a detector reading it "
                                    "must declare it in reads()")
        return self.vectors[name], self.ok[name]

    def dim(self, name: str) -> int:
        return int(self.space(name)[0].shape[1])


@dataclasses.dataclass
class Corpus:
    """Keys, captions and per-model embeddings of every sample the embed step saw."""

    keys: Sequence[str]  # PackedStrings when loaded from a store: a list of a million keys is 70 MB, packed 16
    captions: Sequence[str]
    shard_names: list[str]
    shard_bounds: np.ndarray  # (shards + 1,) row offsets: shard i is rows bounds[i]:bounds[i+1]
    live: np.ndarray
    reasons: Sequence[str]
    source_status: Sequence[str]
    hash_status: Sequence[str]
    models: dict[str, ModelView]
    primary: str

    def __len__(self) -> int:
        return len(self.keys)

    def model(self, name: str | None = None) -> ModelView:
        name = name or self.primary
        if name not in self.models:
            raise KeyError(f"no embeddings named {name!r}; loaded: {', '.join(self.models)}")
        return self.models[name]

    def shard_rows(self, index: int) -> slice:
        return slice(int(self.shard_bounds[index]), int(self.shard_bounds[index + 1]))


@dataclasses.dataclass
class _LoadedStore:
    info: StoreInfo
    names: list[str]
    parts: list[ShardEmbeddings]  # strings, masks and flags per shard; their vectors are in ``vectors``
    vectors: dict[str, np.ndarray]  # kept space -> (rows, dim) float32, every shard's rows in shard order


def _load_store(store: Path, shards: list[str] | None, keep: Collection[str] | None,
                spill: Path | None = None) -> _LoadedStore:
    """Every shard of ``store`` (checked against its record), holding only the vectors of the spaces in
    ``keep`` (all when None). Each kept space is one array allocated up front (its size read from the shards'
    row counts) and filled shard by shard, so no shard's copy outlives its read: the largest arrays of a
    scan are never held twice, and freed blocks do not fragment the heap between long-lived strings. With
    ``spill`` (a folder), that array is a ``.npy`` file there, memory-mapped (see ``load_corpus``)."""
    info = read_info(store)
    names = list_store_shards(store) if shards is None else shards
    if not names:
        raise FileNotFoundError(f"no embedded shards (NNNNN.npz) in {store}")
    counts = [read_shard_rows(store, shard) for shard in names]
    kept = [s for s in info.spaces if keep is None or s in keep]
    vectors = {s: _allocate(spill, s, (sum(counts), info.spaces[s])) for s in kept}
    parts, start = [], 0
    for shard, count in zip(names, counts, strict=True):
        part = read_shard_embeddings(store, shard, kept)
        _check_shard(store, shard, info, part, count)
        for space in kept:
            if count:
                vectors[space][start:start + count] = part.vectors[space]
                release_pages(vectors[space])
        part.vectors, part.status = {}, []  # placed, and not part of the corpus: not held until the last shard
        parts.append(part)
        start += count
    return _LoadedStore(info, names, parts, {s: _read_only(v) for s, v in vectors.items()})


def _allocate(spill: Path | None, space: str, shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised (rows, dim) float32 array: in memory, or a new ``.npy`` file in ``spill`` mapped for
    writing (a file of no rows cannot be mapped, and needs no file)."""
    if spill is None or shape[0] == 0:
        return np.empty(shape, np.float32)
    spill.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{space}-", suffix=".npy", dir=spill)
    os.close(handle)
    return np.lib.format.open_memmap(name, mode="w+", dtype=np.float32, shape=shape)


def _read_only(vectors: np.ndarray) -> np.ndarray:
    """A spilled space mapped again read-only (no detector can write into the file); an array in memory as is."""
    if not isinstance(vectors, np.memmap):
        return vectors
    vectors.flush()
    return np.load(vectors.filename, mmap_mode="r")


def _check_shard(store: Path, shard: str, info: StoreInfo, part: ShardEmbeddings, rows: int) -> None:
    if set(part.ok) != set(info.spaces):
        raise EmbeddingMismatchError(f"{store}/{shard}.npz holds the spaces {sorted(part.ok)} but the store's "
                                     f"embedder {info.model_id} writes {sorted(info.spaces)}; {REEMBED}")
    if len(part) != rows:
        raise EmbeddingMismatchError(f"{store}/{shard}.npz changed while it was read ({rows} rows, then {len(part)})")
    for space, vectors in part.vectors.items():
        if len(part) and vectors.shape[1] != info.spaces[space]:
            raise EmbeddingMismatchError(
                f"{store}/{shard}.npz holds {vectors.shape[1]}-d {space} embeddings but the store's "
                f"model {info.model_id} has {info.spaces[space]} dimensions"
            )


def load_corpus(stores: Path | Mapping[str, Path], spaces: Mapping[str, Collection[str]] | None = None,
                spill: Path | None = None) -> Corpus:
    """Load one store, or several (``{name: store}``; the first is the primary) aligned by key. ``spaces``
    names, per store, the stored spaces whose vectors to hold (all of them for a store it does not name).

    ``spill`` (a folder, which the caller removes afterwards) keeps the vectors out of this process's memory:
    each space is written there as one ``.npy`` and memory-mapped, and readers release the pages they
    touch block by block (``vectors.release_pages``). Every reader sees the same float32 values either way,
    so scores do not change; at a million 128-d vectors that is half a gigabyte the scan no longer holds."""
    named = {"model": Path(stores)} if isinstance(stores, (str, Path)) else {k: Path(v) for k, v in stores.items()}
    if not named:
        raise ValueError("no embedding store given")
    keep = dict(spaces or {})
    primary = next(iter(named))
    first = _load_store(named[primary], None, keep.get(primary), spill)
    keys = _joined(first.parts, "keys")
    duplicate = first_duplicate(keys)
    if duplicate is not None:
        raise EmbeddingMismatchError(f"duplicate keys across the shards of {named[primary]} ({duplicate!r} twice): "
                                     "keys must be unique")
    bounds = np.concatenate([[0], np.cumsum([len(p) for p in first.parts])]).astype(np.int64)
    models = {primary: _view(first)}
    for name, store in list(named.items())[1:]:
        if list_store_shards(store) != first.names:
            raise EmbeddingMismatchError(
                f"embeddings {name!r} ({store}) do not cover the same samples as {primary!r} ({named[primary]}): "
                f"shards {list_store_shards(store)} vs {first.names}; embed the same shards with both models"
            )
        other = _load_store(store, first.names, keep.get(name), spill)
        other_keys = _joined(other.parts, "keys")
        if other_keys != keys:
            missing = len(set(keys) - set(other_keys))
            raise EmbeddingMismatchError(
                f"embeddings {name!r} ({store}) do not cover the same samples as {primary!r} ({named[primary]}): "
                f"{missing} keys missing or out of order; embed the same shards with both models"
            )
        models[name] = _view(other)
    parts = first.parts
    return Corpus(
        keys=keys,
        captions=_joined(parts, "captions"),
        shard_names=first.names,
        shard_bounds=bounds,
        live=np.concatenate([p.live for p in parts]).astype(bool),
        reasons=_joined(parts, "reasons"),
        source_status=_joined(parts, "source_status"),
        hash_status=_joined(parts, "hash_status"),
        models=models,
        primary=primary,
    )


def _joined(parts: list[ShardEmbeddings], field: str) -> PackedStrings:
    """One string field of every shard, in shard order, packed (a shard read from a store is packed already)."""
    return PackedStrings.join([PackedStrings.of(getattr(p, field)) for p in parts])


def _view(loaded: _LoadedStore) -> ModelView:
    ok = {s: np.concatenate([p.ok[s] for p in loaded.parts]).astype(bool) for s in loaded.info.spaces}
    return ModelView(info=loaded.info, vectors=loaded.vectors, ok=ok)


def in_memory_info(spaces: dict[str, int]) -> StoreInfo:
    """The record of embeddings made elsewhere (tests, benchmarks, notebooks)."""
    return StoreInfo("in-memory", "unknown", dict(spaces), "float32", "memory")


def corpus_from_spaces(vectors: Mapping[str, np.ndarray], keys: list[str] | None = None,
                       captions: list[str] | None = None, ok: Mapping[str, np.ndarray] | None = None) -> Corpus:
    """An in-memory corpus (one shard) of L2-normalised vectors per named space."""
    arrays = {s: np.ascontiguousarray(v, dtype=np.float32) for s, v in vectors.items()}
    sizes = {len(v) for v in arrays.values()}
    if len(sizes) != 1:
        raise EmbeddingMismatchError(f"spaces hold different numbers of rows: { {s: len(v) for s, v in arrays.items()} }")
    n = sizes.pop()
    masks = {s: np.ones(n, bool) if ok is None or s not in ok else np.asarray(ok[s], bool) for s in arrays}
    view = ModelView(in_memory_info({s: int(v.shape[1]) for s, v in arrays.items()}), arrays, masks)
    return Corpus(keys=keys or [f"{i:012d}" for i in range(n)], captions=captions or [""] * n, shard_names=["00000"],
                  shard_bounds=np.array([0, n]), live=np.ones(n, bool), reasons=[""] * n, source_status=[""] * n,
                  hash_status=[""] * n, models={"model": view}, primary="model")


def corpus_from_vectors(image: np.ndarray, text: np.ndarray | None = None, keys: list[str] | None = None,
                        captions: list[str] | None = None) -> Corpus:
    """An in-memory image/text corpus (text defaults to the image vectors), for detectors on embeddings made elsewhere."""
    image = np.asarray(image, dtype=np.float32)
    text = image if text is None else np.asarray(text, dtype=np.float32)
    if text.shape != image.shape:
        raise EmbeddingMismatchError(f"image embeddings are {image.shape}, text embeddings {text.shape}")
    return corpus_from_spaces({"image": image, "text": text}, keys, captions)
