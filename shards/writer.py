"""Writing a shard atomically: ``NNNNN.tar`` + ``NNNNN.parquet`` sidecar + ``NNNNN_stats.json``.

All three are written under temporary names and renamed into place only when the shard is complete,
the stats file last: it doubles as the completion marker, so a rerun can skip the shard and no reader
ever sees a partial tar under its final name. Temporary names are unique per writer, so two attempts
at the same shard (a retried Dask task) never write into each other's files.

Tars are byte-reproducible: members are plain GNU tar entries with a fixed mtime, owner and mode, and
metadata is canonical JSON. The sidecar holds one row per sample the writer received, live or not,
with its status and reason, in a fixed schema so that every shard's sidecar reads into one table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from poisonlab.pipelines.accounting import ShardStats, StageCounts, reason_category
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import IMAGE_EXTENSIONS, ImageError, probe_image
from poisonlab.shards.keys import display_key, split_member_name, unsafe_name
from poisonlab.shards.layout import sidecar_path, stats_path, tar_path, unique_temp_path
from poisonlab.shards.sidecar import SIDECAR_COLUMNS, SIDECAR_SCHEMA, SidecarBuilder, printable
from poisonlab.shards.tarformat import BLOCK, archive_end, member_header

__all__ = ["SIDECAR_COLUMNS", "SIDECAR_SCHEMA", "ShardWriter", "encode_meta", "reason_category"]

_EXTENSION = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")
_NUL = b"\0"
_BUFFER = 1 << 20  # large writes: a few system calls per shard, not several per sample
_META_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """Canonical JSON for ``.json`` members, so unchanged samples stay byte-identical across runs."""
    return _META_JSON.encode(meta).encode("utf-8")


def _pixels(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31 else None


def _text(value: str | None) -> str | None:
    return None if value is None else printable(value)


class ShardWriter:
    """Write one shard; use as a context manager. Unless ``close()`` completes, nothing is renamed into place."""

    def __init__(self, directory: Path, shard: str, source: str | None = None,
                 marker: Mapping[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.stats = ShardStats(shard=shard, source=source)
        self._sidecar = SidecarBuilder()
        self._marker = dict(marker or {})  # completion marker fields (shards.markers); the tar's digest is added
        self._sha = hashlib.sha256()
        self._keys: set[str] = set()
        self._final = {
            "tar": tar_path(self.directory, shard),
            "sidecar": sidecar_path(self.directory, shard),
            "stats": stats_path(self.directory, shard),
        }
        self._tmp = {kind: unique_temp_path(p) for kind, p in self._final.items()}  # the one temp-name scheme
        self._fh = open(self._tmp["tar"], "wb", buffering=_BUFFER)
        self._offset = 0
        self._closed = False

    def _add_member(self, name: str, data: bytes) -> None:
        header = member_header(name, len(data))
        pad = -len(data) % BLOCK
        self._fh.write(header)
        self._fh.write(data)
        self._sha.update(header)
        self._sha.update(data)
        if pad:
            self._fh.write(_NUL * pad)
            self._sha.update(_NUL * pad)
        self._offset += len(header) + len(data) + pad

    def _refusal(self, sample: Sample) -> str | None:
        """Why a live sample cannot go into the tar as it is (it is then recorded as an error)."""
        key = sample.key
        if not key or unsafe_name(key) or "." in key.rpartition("/")[2] or split_member_name(f"{key}.txt")[0] != key:
            return f"invalid_key: {display_key(key)!r} cannot be a WebDataset key"
        if key in self._keys:
            return f"duplicate_key: {key!r} was already written to this shard"
        if sample.payload is not None and not _EXTENSION.match(sample.payload_ext or ""):
            return f"invalid_payload_ext: {printable(sample.payload_ext or '')!r}"
        if sample.payload_ext in ("txt", "json"):
            return f"invalid_payload_ext: {sample.payload_ext!r} is reserved for captions and metadata"
        if sample.text is not None and printable(sample.text) != sample.text:
            return "caption_not_utf8: the caption cannot be encoded as UTF-8"
        return None

    def write(self, sample: Sample) -> None:
        """Record a sample: live ones go into the tar and the sidecar, the others into the sidecar only."""
        if self._closed:
            raise RuntimeError(f"shard {self.shard} is already closed")
        meta = dict(sample.meta)
        payload = sample.payload
        width, height = _pixels(meta.get("width")), _pixels(meta.get("height"))
        meta_json = b""
        if sample.is_live:
            if payload is not None and width is None and sample.payload_ext in IMAGE_EXTENSIONS:
                try:  # only when the source did not say: the reader already probed every image it read
                    width, height = probe_image(payload)
                    meta["width"], meta["height"] = width, height
                except ImageError:
                    pass
            refusal = self._refusal(sample)
            if refusal is None:
                try:
                    meta_json = encode_meta(meta)
                except (UnicodeEncodeError, TypeError, ValueError) as exc:
                    refusal = f"invalid_meta: {type(exc).__name__}"
            if refusal is not None:
                sample = sample.errored("write", refusal)
        if sample.is_live:
            if payload is not None:
                self._add_member(f"{sample.key}.{sample.payload_ext}", payload)
            if sample.text is not None:
                self._add_member(f"{sample.key}.txt", sample.text.encode("utf-8"))
            self._add_member(f"{sample.key}.json", meta_json)
            self._keys.add(sample.key)
            self.stats.written += 1
        else:
            self.stats.reasons[reason_category(sample.reason or sample.status)] += 1
        provenance = meta.get("poisonlab")
        self._sidecar.append((
            display_key(sample.key),
            self.shard,
            sample.status,
            _text(sample.reason),
            _text(sample.text),
            sample.payload_ext if payload is not None else None,
            len(payload) if payload is not None else None,
            hashlib.sha256(payload).hexdigest() if payload is not None else None,
            width,
            height,
            ",".join(sample.touched_by) or None,
            None if provenance is None else json.dumps(provenance, sort_keys=True, default=str),
        ), meta)
        self.stats.samples += 1
        self.stats.by_status[sample.status] += 1

    def close(self, stages: list[StageCounts] | None = None, shard_errors: list[str] | None = None) -> ShardStats:
        """Finish the tar, sidecar and stats under temporary names, then rename them into place (stats last)."""
        self.stats.stages = list(stages or [])
        self.stats.shard_errors = list(shard_errors or [])
        end = archive_end(self._offset)
        self._fh.write(end)
        self._sha.update(end)
        marker = {**self._marker, "tar_bytes": self._offset + len(end), "tar_sha256": self._sha.hexdigest()}
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        pq.write_table(self._sidecar.table(), self._tmp["sidecar"], compression="zstd")
        record = {**self.stats.to_dict(), "marker": marker}
        self._tmp["stats"].write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        for kind in ("tar", "sidecar", "stats"):
            os.replace(self._tmp[kind], self._final[kind])
        self._closed = True
        return self.stats

    def abort(self) -> None:
        """Remove the temporary files; whatever was already complete under final names stays as it was."""
        self._closed = True
        try:
            if not self._fh.closed:
                self._fh.close()  # flushes: on a full disk this raises too, and must not leak the temp files
        except OSError:
            pass
        finally:
            for path in self._tmp.values():
                path.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if not self._closed:  # an exception, or a writer left without close(): never half-commit
            self.abort()

