"""The embedding store: one folder per model, one ``.npz`` per shard, keyed by sample.

Layout (``<root>/<model_id>/``)::

    model.json      which model (architecture, weights and their digest), dimension, storage dtype, source
    00000.npz       keys, captions, image and text embeddings (L2-normalised), what could not be embedded

Embeddings are computed once per model and shard and reused by every detector; a shard file is renamed
into place only when complete, and records the digest of the tar it came from, so embeddings of another
version of a shard are refused instead of silently mixed. Strings are stored as UTF-8 bytes plus offsets
(never as pickled objects), so ``np.load(..., allow_pickle=False)`` reads every file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from poisonlab.shards.layout import atomic_write_json, tar_path

MODEL_FILE = "model.json"
STORE_VERSION = 1
_STRING_FIELDS = ("keys", "captions", "status", "reasons", "source_status", "hash_status")


class EmbeddingMismatchError(ValueError):
    """Embeddings that do not belong together: other dimensions, another model, or other shards."""


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """What ``model.json`` holds: enough to tell two stores apart and to refuse mixing them."""

    model_id: str
    arch: str
    weights: str | None
    weights_digest: str
    embed_dim: int
    image_size: int
    context_length: int
    dtype: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "version": STORE_VERSION, "normalised": True}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreInfo:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def read_info(store: Path) -> StoreInfo:
    path = Path(store) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{store} is not an embedding store: {MODEL_FILE} is missing (run `poisonlab embed`)")
    return StoreInfo.from_dict(json.loads(path.read_text()))


def write_info(store: Path, info: StoreInfo) -> None:
    """Create the store, or check that an existing one holds the same model for the same source."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    path = store / MODEL_FILE
    if path.exists():
        old = read_info(store)
        for field in ("model_id", "embed_dim", "dtype", "source"):
            if getattr(old, field) != getattr(info, field):
                raise EmbeddingMismatchError(
                    f"{store} holds embeddings with {field}={getattr(old, field)!r}, not {getattr(info, field)!r}; "
                    "use another output folder"
                )
        return
    atomic_write_json(path, info.to_dict())


def shard_file(store: Path, shard: str) -> Path:
    return Path(store) / f"{shard}.npz"


def list_store_shards(store: Path) -> list[str]:
    return sorted(p.stem for p in Path(store).glob("*.npz") if p.stem.isdigit())


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks (a shard's identity: embeddings of another version are refused)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_digest(source: Path, shard: str) -> str:
    path = tar_path(Path(source), shard)
    return file_digest(path) if path.exists() else "missing"


def pack_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and end offsets: strings without object arrays (loadable with allow_pickle=False)."""
    encoded = [v.encode("utf-8") for v in values]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), ends


def unpack_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [raw[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


@dataclasses.dataclass
class ShardEmbeddings:
    """Everything the embed step knows about one shard's samples, row-aligned."""

    keys: list[str]
    captions: list[str]
    image: np.ndarray  # (n, d); rows without an image embedding are zero
    text: np.ndarray
    image_ok: np.ndarray  # bool
    text_ok: np.ndarray
    live: np.ndarray  # the sample was live in the shard (non-live ones are carried for accounting)
    status: list[str]  # the sample's status in the shard (ok, changed, added, error, ...)
    reasons: list[str]  # why a row has no embedding ("" when it has both)
    source_status: list[str]  # status recorded upstream (img2dataset's, ingest's), "" when none
    hash_status: list[str]  # "mismatch", "match" or "" (no hashes to compare)
    digest: str

    def __len__(self) -> int:
        return len(self.keys)


def write_shard(store: Path, shard: str, emb: ShardEmbeddings, dtype: str) -> Path:
    """Write under a temporary name, then rename: a shard file is either complete or absent."""
    arrays: dict[str, np.ndarray] = {
        "image": emb.image.astype(dtype), "text": emb.text.astype(dtype),
        "image_ok": emb.image_ok.astype(bool), "text_ok": emb.text_ok.astype(bool), "live": emb.live.astype(bool),
        "digest": np.frombuffer(emb.digest.encode(), dtype=np.uint8).copy(),
        "version": np.array([STORE_VERSION], dtype=np.int64),
    }
    for name in _STRING_FIELDS:
        arrays[f"{name}_bytes"], arrays[f"{name}_ends"] = pack_strings(getattr(emb, name))
    final = shard_file(store, shard)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def read_shard_digest(store: Path, shard: str) -> str:
    with np.load(shard_file(store, shard), allow_pickle=False) as data:
        return data["digest"].tobytes().decode()


def read_shard_embeddings(store: Path, shard: str) -> ShardEmbeddings:
    with np.load(shard_file(store, shard), allow_pickle=False) as data:
        strings = {name: unpack_strings(data[f"{name}_bytes"], data[f"{name}_ends"]) for name in _STRING_FIELDS}
        return ShardEmbeddings(
            image=data["image"].astype(np.float32), text=data["text"].astype(np.float32),
            image_ok=data["image_ok"], text_ok=data["text_ok"], live=data["live"],
            digest=data["digest"].tobytes().decode(), **strings,
        )
