"""Writing a shard atomically: ``NNNNN.tar`` + ``NNNNN.parquet`` sidecar + ``NNNNN_stats.json``.

Everything is written under a temporary name and renamed into place only when the shard is complete,
the stats file last: it doubles as the completion marker, so a rerun can skip the shard and no reader
ever sees a partial tar under its final name. Tars are byte-reproducible (fixed mtime, owner and mode).
The sidecar holds one row per sample the writer received, live or not, with its status and reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.pipelines.accounting import ShardStats, StageCounts
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import IMAGE_EXTENSIONS, ImageError, probe_image
from poisonlab.shards.layout import atomic_write_json, sidecar_path, stats_path, tar_path

SIDECAR_COLUMNS = (
    "key", "shard", "status", "reason", "caption", "payload_ext", "bytes", "sha256", "width", "height",
    "touched_by", "provenance",
)


def encode_meta(meta: dict[str, Any]) -> bytes:
    """Canonical JSON for ``.json`` members, so unchanged samples stay byte-identical across runs."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def reason_category(reason: str) -> str:
    """'stage: kind: details' -> 'stage: kind', so stats count kinds of failure, not unique messages."""
    parts = [p.strip() for p in reason.split(":")]
    return ": ".join(parts[:2])


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _flatten_meta(meta: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in meta.items():
        if k in ("width", "height", "poisonlab"):
            continue
        name = f"meta_{k}" if k in SIDECAR_COLUMNS else k
        row[name] = v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v, sort_keys=True, default=str)
    return row


def _rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    columns: list[str] = list(SIDECAR_COLUMNS)
    extra = sorted({k for r in rows for k in r} - set(columns))
    names = columns + extra
    arrays = {}
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a source column: keep them as text
            arrays[name] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    if not rows:
        return pa.table({n: pa.array([], type=pa.string()) for n in columns})
    return pa.table(arrays)


class ShardWriter:
    """Write one shard; use as a context manager. On an exception nothing is renamed into place."""

    def __init__(self, directory: Path, shard: str, source: str | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.stats = ShardStats(shard=shard, source=source)
        self._rows: list[dict[str, Any]] = []
        self._tmp_tar = tar_path(self.directory, shard).with_suffix(".tar.tmp")
        self._fh = open(self._tmp_tar, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.GNU_FORMAT)

    def _add_member(self, name: str, data: bytes) -> None:
        self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))

    def write(self, sample: Sample) -> None:
        meta = dict(sample.meta)
        row: dict[str, Any] = {
            "key": sample.key,
            "shard": self.shard,
            "status": sample.status,
            "reason": sample.reason,
            "caption": sample.text,
            "payload_ext": sample.payload_ext if sample.payload is not None else None,
            "bytes": len(sample.payload) if sample.payload is not None else None,
            "sha256": hashlib.sha256(sample.payload).hexdigest() if sample.payload is not None else None,
            "width": meta.get("width"),
            "height": meta.get("height"),
            "touched_by": ",".join(sample.touched_by) or None,
            "provenance": json.dumps(meta["poisonlab"], sort_keys=True) if "poisonlab" in meta else None,
        }
        if sample.is_live:
            if sample.payload is not None and sample.payload_ext in IMAGE_EXTENSIONS and row["width"] is None:
                try:
                    row["width"], row["height"] = probe_image(sample.payload)
                    meta["width"], meta["height"] = row["width"], row["height"]
                except ImageError:
                    pass
            if sample.payload is not None:
                self._add_member(f"{sample.key}.{sample.payload_ext}", sample.payload)
            if sample.text is not None:
                self._add_member(f"{sample.key}.txt", sample.text.encode("utf-8"))
            self._add_member(f"{sample.key}.json", encode_meta(meta))
            self.stats.written += 1
        else:
            self.stats.reasons[reason_category(sample.reason or sample.status)] += 1
        row.update(_flatten_meta(meta))
        self._rows.append(row)
        self.stats.samples += 1
        self.stats.by_status[sample.status] += 1

    def close(self, stages: list[StageCounts] | None = None, shard_errors: list[str] | None = None) -> ShardStats:
        """Finish the tar and sidecar and rename everything into place (stats last)."""
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self.stats.stages = list(stages or [])
        self.stats.shard_errors = list(shard_errors or [])
        table = _rows_to_table(self._rows)
        side = sidecar_path(self.directory, self.shard)
        tmp_side = side.with_name(side.name + ".tmp")
        pq.write_table(table, tmp_side, compression="zstd")
        os.replace(self._tmp_tar, tar_path(self.directory, self.shard))
        os.replace(tmp_side, side)
        atomic_write_json(stats_path(self.directory, self.shard), self.stats.to_dict())
        return self.stats

    def abort(self) -> None:
        try:
            self._tar.close()
            self._fh.close()
        finally:
            self._tmp_tar.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if exc_type is not None:
            self.abort()

