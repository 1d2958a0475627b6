"""The poison manifest: one row per poisoned or added sample, built from the output sidecars.

The sidecars are the truth of what was written (the writer stores each sample's ``meta["poisonlab"]``
in the ``provenance`` column), so the manifest cannot disagree with the shards. Rows are sorted by key
and the file is written under a temporary name and renamed, like every other output, into the run folder
``DIR/_run/`` (so ``DIR/*.parquet`` matches only the sidecars); folders written before that hold it as
``DIR/manifest.parquet``, which ``manifest_path`` still finds.

A manifest describes the poisoned output folder (its samples' keys and bytes), so its parquet metadata
records that folder's fingerprint (``poisonlab.shards.fingerprint``): ``recall`` refuses scores computed on
another folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.layout import atomic_write_bytes, find_run_file, list_sidecars, run_file, sidecar_path

MANIFEST_FILE = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("attack", pa.string()),
    ("attack_id", pa.string()),
    ("change", pa.string()),  # "modified" or "added"
    ("target", pa.string()),
    ("params", pa.string()),  # JSON, defaults included
    ("original_caption", pa.string()),
    ("new_caption", pa.string()),
    ("placement", pa.string()),  # JSON: where the trigger went (patch box, caption offset, source image)
    ("original_sha256", pa.string()),
    ("poisoned_sha256", pa.string()),
])


def _json(value: object) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def build_manifest(directory: Path, run_id: str) -> pa.Table:
    """Rows of every live sample whose provenance belongs to this run, sorted by (key, shard)."""
    rows = []
    for shard in list_sidecars(Path(directory)):
        table = pq.read_table(sidecar_path(Path(directory), shard), columns=["key", "status", "sha256", "provenance"])
        for row in table.to_pylist():
            if not row["provenance"] or row["status"] not in LIVE_STATUSES:
                continue
            record = json.loads(row["provenance"])
            if not isinstance(record, dict) or record.get("run") != run_id:
                continue
            rows.append({
                "key": row["key"], "shard": shard, "attack": record["attack"], "attack_id": record["attack_id"],
                "change": record["change"], "target": record.get("target"), "params": _json(record.get("params")),
                "original_caption": record.get("original_caption"), "new_caption": record.get("new_caption"),
                "placement": _json(record.get("placement")), "original_sha256": record.get("original_sha256"),
                "poisoned_sha256": row["sha256"],
            })
    rows.sort(key=lambda r: (r["key"], r["shard"]))
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def write_manifest(directory: Path, table: pa.Table) -> Path:
    """Serialise in memory, then write under a temporary name and rename (readers never see half a file).

    A manifest an older version left beside the shards is removed once the new one is in place: a folder
    never holds two manifests that could disagree.
    """
    path = run_file(directory, MANIFEST_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    (Path(directory) / MANIFEST_FILE).unlink(missing_ok=True)
    return path


def manifest_path(path: Path) -> Path:
    """The manifest file itself, given it or the poisoned folder that holds it (new or old layout)."""
    path = Path(path)
    return find_run_file(path, MANIFEST_FILE) if path.is_dir() else path


def read_manifest(directory: Path) -> pa.Table:
    return pq.read_table(manifest_path(directory))
