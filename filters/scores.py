"""Score tables: one parquet per shard (``{shard}.parquet``), one row per sample, one column per detector.

Columns: ``key``, ``shard``, ``live`` (the sample was live in the scanned shards), ``embedded_<space>`` for
each space of the primary store (``embedded_image``, ``embedded_text`` for open_clip), ``reason`` (why a
row has no embedding), then one float64
column per detector, higher = more suspicious, null where a detector could not score the row. ``scan.json``
beside them records the stores and detector parameters and ``dataset`` (the shard folder scored, with
its fingerprint: ``scores_ref``); it is written last and marks the scan complete.
Decisions and recall metrics only ever read these tables: re-thresholding never recomputes anything.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.shards.fingerprint import DatasetRef
from poisonlab.shards.layout import atomic_path

SCAN_FILE = "scan.json"
BASE_COLUMNS = ("key", "shard", "live", "reason")
EMBEDDED_PREFIX = "embedded_"


def is_base_column(name: str) -> bool:
    """Key, shard, liveness, reason and the ``embedded_<space>`` flags: everything that is not a score."""
    return name in BASE_COLUMNS or name.startswith(EMBEDDED_PREFIX)


def score_path(directory: Path, shard: str) -> Path:
    return Path(directory) / f"{shard}.parquet"


def list_score_shards(directory: Path) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.parquet") if p.stem.isdigit())


def write_table_atomic(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_score_shard(directory: Path, shard: str, base: dict[str, list | np.ndarray],
                      columns: dict[str, np.ndarray]) -> Path:
    arrays: dict[str, pa.Array] = {
        "key": pa.array(base["key"], pa.string()),
        "shard": pa.array([shard] * len(base["key"]), pa.string()),
        "live": pa.array(np.asarray(base["live"], bool)),
        **{name: pa.array(np.asarray(v, bool)) for name, v in base.items() if name.startswith(EMBEDDED_PREFIX)},
        "reason": pa.array([r or None for r in base["reason"]], pa.string()),
    }
    for name, values in columns.items():
        values = np.asarray(values, np.float64)
        arrays[name] = pa.array(values, pa.float64(), mask=~np.isfinite(values))
    path = score_path(directory, shard)
    write_table_atomic(pa.table(arrays), path)
    return path


def key_ranks(keys: list[str]) -> np.ndarray:
    """Position of each key in sorted order (the tie-break of every ranking)."""
    order = np.argsort(np.asarray(keys, dtype=str), kind="stable")
    ranks = np.empty(len(keys), np.int64)
    ranks[order] = np.arange(len(keys))
    return ranks


def ranking(scores: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Row order from most to least suspicious (equal scores by key); unscored rows last."""
    filled = np.where(np.isfinite(scores), scores, -np.inf)
    return np.lexsort((tie_break, -filled))


@dataclasses.dataclass
class ScoreTable:
    """Every score table of a scan, concatenated (rows in shard order)."""

    keys: list[str]
    shards: np.ndarray  # shard name of each row
    live: np.ndarray
    reasons: list[str]
    columns: dict[str, np.ndarray]  # float64, NaN where not scored
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.keys)

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise KeyError(f"no score column {name!r}; this scan has: {', '.join(self.columns) or 'none'}")
        return self.columns[name]


def read_scan_info(directory: Path) -> dict[str, Any]:
    path = Path(directory) / SCAN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no complete scan ({SCAN_FILE} is missing; run `poisonlab scan`)")
    return json.loads(path.read_text())


def scores_ref(info: dict[str, Any]) -> DatasetRef | None:
    """The shard folder a scan's scores describe (None for a scan written before it was recorded)."""
    return DatasetRef.from_dict(info.get("dataset"))


def load_scores(directory: Path) -> ScoreTable:
    directory = Path(directory)
    info = read_scan_info(directory)
    shards = list_score_shards(directory)
    if not shards:
        raise FileNotFoundError(f"no score tables (NNNNN.parquet) in {directory}")
    table = pa.concat_tables([pq.read_table(score_path(directory, s)) for s in shards], promote_options="default")
    names = [c for c in table.column_names if not is_base_column(c)]
    columns = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in names}
    return ScoreTable(
        keys=table.column("key").to_pylist(),
        shards=np.asarray(table.column("shard").to_pylist()),
        live=table.column("live").to_numpy(zero_copy_only=False).astype(bool),
        reasons=[r or "" for r in table.column("reason").to_pylist()],
        columns=columns,
        info=info,
    )
