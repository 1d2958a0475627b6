"""The embedding store: one folder per embedder configuration, one ``.npz`` per shard, keyed by sample.

Layout (``<root>/<model_id>/``)::

    model.json      which embedder (name, identity, details such as weights and their digest), the named
                    spaces with their dimensions, storage dtype, source, ``dataset``: the source folder's
                    fingerprint (``poisonlab.shards.fingerprint``), which scans copy into ``scan.json``, and
                    ``settings``: how every shard was computed (batch size, threads, device kind, precision,
                    compiled or not), which a rerun into the store must repeat
    00000.npz       keys, captions, one array per space (L2-normalised) with a mask of embedded rows, and
                    what could not be embedded

Embeddings are computed once per embedder and shard and reused by every detector; a shard file is renamed
into place only when complete, and records the digest of the tar it came from, so embeddings of another
version of a shard are refused instead of silently mixed. Strings are stored as UTF-8 bytes plus offsets
(never as pickled objects), so ``np.load(..., allow_pickle=False)`` reads every file.

Format 1 (written before embedders were registered) held fixed ``image``/``text`` arrays and an
``embed_dim``: it is still read, as the spaces ``image`` and ``text`` of an open_clip embedder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from poisonlab.filters.packed import PackedStrings
from poisonlab.shards.fingerprint import DatasetRef
from poisonlab.shards.layout import atomic_path, atomic_write_json, tar_path

MODEL_FILE = "model.json"
STORE_VERSION = 2
READABLE_VERSIONS = (1, 2)
STORE_DTYPES = ("float32", "float16")  # how vectors may be stored (read back as float32); the first is the default
_STRING_FIELDS = ("keys", "captions", "status", "reasons", "source_status", "hash_status")
_INFO_FIELDS = ("model_id", "embedder", "spaces", "dtype", "source", "identity", "version", "normalised", "dataset",
                "settings")
REEMBED = "re-embed the shards with `poisonlab embed` into a fresh folder"


class EmbeddingMismatchError(ValueError):
    """Embeddings that do not belong together: other dimensions, another model, or other shards."""


class StoreFormatError(EmbeddingMismatchError):
    """A store written in a format this version cannot read."""


class MissingSpaceError(EmbeddingMismatchError):
    """A detector (or caller) asked for a space the store does not hold."""


# The space of the sample's own payload, whatever the modality: detectors read it by default, so every one of
# them runs on images (open_clip: ``image``) and graphs (graph_clip: ``graph``) alike. A store resolves it
# through its embedder's declared ``payload_space`` (else its first space).
PAYLOAD_SPACE = "sample"


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """What ``model.json`` holds: enough to tell two stores apart and to refuse mixing them."""

    model_id: str
    embedder: str
    spaces: dict[str, int]  # space name -> dimension
    dtype: str
    source: str
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # embedder facts (arch, weights, ...)
    dataset: DatasetRef | None = None  # the shard folder embedded; None in a store written before it was kept
    # the run settings every shard was written with (batch size, threads, precision...: the floats depend on
    # them; a pixel cap: which images embed); empty in a store written before they were kept
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        base = {"model_id": self.model_id, "embedder": self.embedder, "spaces": dict(self.spaces),
                "dtype": self.dtype, "source": self.source, "identity": self.identity}
        if self.dataset is not None:
            base["dataset"] = self.dataset.to_dict()
        if self.settings:
            base["settings"] = dict(self.settings)
        return {**self.details, **base, "version": STORE_VERSION, "normalised": True}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreInfo:
        version = data.get("version", 1)
        if version not in READABLE_VERSIONS:
            raise StoreFormatError(f"embedding store format {version!r} is not one this poisonlab reads "
                                   f"({', '.join(map(str, READABLE_VERSIONS))}); {REEMBED}")
        if version == 1:  # fixed image/text fields of one open_clip model
            dim = int(data["embed_dim"])
            details = {k: v for k, v in data.items() if k not in ("model_id", "dtype", "source", "version", "normalised")}
            return cls(str(data["model_id"]), "open_clip", {"image": dim, "text": dim}, str(data["dtype"]),
                       str(data["source"]), {"weights": data.get("weights_digest")}, details)
        details = {k: v for k, v in data.items() if k not in _INFO_FIELDS}
        return cls(str(data["model_id"]), str(data["embedder"]), {str(k): int(v) for k, v in data["spaces"].items()},
                   str(data["dtype"]), str(data["source"]), dict(data.get("identity") or {}), details,
                   DatasetRef.from_dict(data.get("dataset")), dict(data.get("settings") or {}))

    def resolve(self, space: str) -> str:
        """A stored space name: ``sample`` (``PAYLOAD_SPACE``) is the space the store's embedder declares for
        the payload, or the store's first space when it declares none (embeddings made elsewhere)."""
        if space != PAYLOAD_SPACE:
            return space
        from poisonlab.filters.embedders import payload_space

        return payload_space(self.embedder) or next(iter(self.spaces), space)

    def require(self, spaces: Sequence[str], who: str, where: str) -> None:
        """Refuse, in one line, a reader that needs spaces this store does not hold."""
        missing = [s for s in map(self.resolve, spaces) if s not in self.spaces]
        if missing:
            raise MissingSpaceError(
                f"{who} reads the space {missing[0]!r}, which the embedding store {where} (embedder "
                f"{self.embedder}) does not hold; it has: {', '.join(self.spaces) or 'none'}. Embed with an "
                f"embedder that produces {missing[0]!r} (`poisonlab components embedder`) or choose one of these spaces")


def read_info(store: Path) -> StoreInfo:
    path = Path(store) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{store} is not an embedding store: {MODEL_FILE} is missing (run `poisonlab embed`)")
    try:
        return StoreInfo.from_dict(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, StoreFormatError):
            raise
        raise StoreFormatError(f"{path} is not a readable embedding store record ({type(exc).__name__}: {exc}); "
                               f"{REEMBED}") from None


def write_info(store: Path, info: StoreInfo) -> None:
    """Create the store, or check that an existing one holds the same embedder for the same source.

    A store of the same source folder whose fingerprint changed gets the new one: its shard files are
    each checked against their tar's digest (a changed tar is refused), so only sidecar-only changes pass.
    A store written before run settings were kept has none to check, and is given none (nothing says which
    settings its shards had).
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    path = store / MODEL_FILE
    if path.exists():
        old = read_info(store)
        for field in ("model_id", "spaces", "dtype", "source"):
            if getattr(old, field) != getattr(info, field):
                raise EmbeddingMismatchError(
                    f"{store} holds embeddings with {field}={getattr(old, field)!r}, not {getattr(info, field)!r}; "
                    "use another output folder"
                )
        _require_same_settings(store, old.settings, info.settings)
        info = dataclasses.replace(info, settings=old.settings)
        if old.dataset == info.dataset:
            return
    atomic_write_json(path, info.to_dict())


def _require_same_settings(store: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Refuse to add shards computed otherwise than the ones already there (their floats, or which samples
    they could embed, would differ)."""
    if not old:
        return
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            raise EmbeddingMismatchError(
                f"{store} holds embeddings computed with {name}={old.get(name)!r}, not {new.get(name)!r} (its "
                "shards depend on it); embed with the settings of its model.json or into another output folder")


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
    return PackedStrings.of(values).arrays()


def read_strings(data: np.ndarray, ends: np.ndarray) -> PackedStrings:
    """Strings as stored, kept packed (checked: offsets in order, every string UTF-8); ValueError otherwise."""
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError("string bytes must be a 1-d uint8 array")
    return PackedStrings(data.tobytes(), ends)


def unpack_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    return list(read_strings(data, ends))


@dataclasses.dataclass
class ShardEmbeddings:
    """Everything the embed step knows about one shard's samples, row-aligned."""

    keys: Sequence[str]  # a list when embedding, PackedStrings when read back (filters/packed.py)
    captions: Sequence[str]
    vectors: dict[str, np.ndarray]  # space -> (n, d); rows without an embedding in that space are zero
    ok: dict[str, np.ndarray]  # space -> bool (n,)
    live: np.ndarray  # the sample was live in the shard (non-live ones are carried for accounting)
    status: Sequence[str]  # the sample's status in the shard (ok, changed, added, error, ...)
    reasons: Sequence[str]  # why a row lacks an embedding ("" when it has every space)
    source_status: Sequence[str]  # status recorded upstream (img2dataset's, ingest's), "" when none
    hash_status: Sequence[str]  # "mismatch", "match" or "" (no hashes to compare)
    digest: str

    def __len__(self) -> int:
        return len(self.keys)

    def space(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.vectors:
            raise MissingSpaceError(f"no space {name!r} in these embeddings; they have: {', '.join(self.vectors)}")
        return self.vectors[name], self.ok[name]


def write_shard(store: Path, shard: str, emb: ShardEmbeddings, dtype: str) -> Path:
    """Write under a unique temporary name, then rename: a shard file is either complete or absent."""
    arrays: dict[str, np.ndarray] = {
        "live": emb.live.astype(bool),
        "digest": np.frombuffer(emb.digest.encode(), dtype=np.uint8).copy(),
        "version": np.array([STORE_VERSION], dtype=np.int64),
    }
    arrays["spaces_bytes"], arrays["spaces_ends"] = pack_strings(list(emb.vectors))
    for name, vectors in emb.vectors.items():
        arrays[f"emb.{name}"] = vectors.astype(dtype)
        arrays[f"ok.{name}"] = emb.ok[name].astype(bool)
    for name in _STRING_FIELDS:
        arrays[f"{name}_bytes"], arrays[f"{name}_ends"] = pack_strings(getattr(emb, name))
    final = shard_file(store, shard)
    with atomic_path(final) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    return final


def read_shard_rows(store: Path, shard: str) -> int:
    """How many samples a shard file holds (its ``live`` flags: no vector is read)."""
    with np.load(shard_file(store, shard), allow_pickle=False) as data:
        try:
            return len(data["live"])
        except KeyError:
            raise StoreFormatError(f"{shard_file(store, shard)} lacks 'live': not an embedding shard this poisonlab "
                                   f"reads; {REEMBED}") from None


def read_shard_digest(store: Path, shard: str) -> str:
    with np.load(shard_file(store, shard), allow_pickle=False) as data:
        return data["digest"].tobytes().decode()


def _spaces_of(data: Any, path: Path,
               keep: Collection[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Vectors of the stored spaces in ``keep`` (all when None) and the masks of every stored space: a space
    nobody reads is never decompressed (at a million rows the text space alone is half a gigabyte)."""
    version = int(data["version"][0]) if "version" in data.files else 1
    if version == 1:
        names, fields = ["image", "text"], {"image": ("image", "image_ok"), "text": ("text", "text_ok")}
    elif version == STORE_VERSION:
        names = unpack_strings(data["spaces_bytes"], data["spaces_ends"])
        fields = {n: (f"emb.{n}", f"ok.{n}") for n in names}
    else:
        raise StoreFormatError(f"{path} is in embedding format {version}, which this poisonlab cannot read; {REEMBED}")
    loaded = [n for n in names if keep is None or n in keep]
    return ({n: data[fields[n][0]].astype(np.float32) for n in loaded}, {n: data[fields[n][1]] for n in names})


def read_shard_embeddings(store: Path, shard: str, spaces: Collection[str] | None = None) -> ShardEmbeddings:
    """One shard's embeddings; with ``spaces``, only those spaces' vectors are read (every mask is)."""
    path = shard_file(store, shard)
    with np.load(path, allow_pickle=False) as data:
        try:
            vectors, ok = _spaces_of(data, path, spaces)
            strings = {name: read_strings(data[f"{name}_bytes"], data[f"{name}_ends"]) for name in _STRING_FIELDS}
            live = data["live"]
        except KeyError as exc:
            raise StoreFormatError(f"{path} lacks {exc}: not an embedding shard this poisonlab reads; {REEMBED}") from None
        except ValueError as exc:
            raise StoreFormatError(f"{path}: {exc}; {REEMBED}") from None
        uneven = sorted(name for name, values in strings.items() if len(values) != len(live))
        if uneven:
            raise StoreFormatError(f"{path}: {', '.join(uneven)} do not have one entry per row ({len(live)}); {REEMBED}")
        return ShardEmbeddings(vectors=vectors, ok=ok, live=live, digest=data["digest"].tobytes().decode(),
                               **strings)
