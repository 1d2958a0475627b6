"""What a partition is planned from: the live rows of a shard folder (key, shard, class label), from its sidecars.

Partitioning never opens an image: the parquet sidecars list every sample with its status and the source's
metadata columns (the generated dataset's ``label`` and ``class``), so they are enough. A shard without a
sidecar (a plain WebDataset tar) is streamed once with image probing off, as the attack planner does
(``poisonlab.attacks.index``); the dataset fingerprint is ``poisonlab.shards.fingerprint``'s, so a partition and a
poisoning run over one folder name the same input.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.fingerprint import dataset_fingerprint, fingerprint_line
from poisonlab.shards.layout import list_shards, sidecar_path
from poisonlab.shards.reader import read_shard

# img2dataset marks downloaded rows "success"; ours are ok/changed/added.
LIVE_SOURCE_STATUSES = LIVE_STATUSES | {"success"}


@dataclasses.dataclass(frozen=True)
class LiveRows:
    """The live samples of a folder as parallel arrays, plus the folder's fingerprint.

    ``labels`` holds the value of the label column requested (None where a row had none, or the whole
    array None when no shard has the column); labels are compared as text, so ints and names both work.
    """

    shards: tuple[str, ...]  # every shard of the folder, sorted
    keys: np.ndarray  # object array of str
    shard_of: np.ndarray  # object array of str, the shard each key is in
    labels: np.ndarray | None
    fingerprint: str

    def __len__(self) -> int:
        return len(self.keys)


def _sidecar_rows(path: Path, label_column: str | None) -> list[dict[str, Any]]:
    names = pq.read_schema(path).names
    columns = ["key", "status"] + ([label_column] if label_column and label_column in names else [])
    return pq.read_table(path, columns=columns).to_pylist()


def _tar_rows(src: Path, shard: str, label_column: str | None) -> list[dict[str, Any]]:
    policy = read_policy_for(src, probe_images=False)  # the folder's modality, headers only
    return [{"key": s.key, "status": s.status, **({label_column: s.meta.get(label_column)} if label_column else {})}
            for s in read_shard(src, shard, policy)]


def _shard_rows(src: Path, shard: str, label_column: str | None) -> list[dict[str, Any]]:
    side = sidecar_path(src, shard)
    return _sidecar_rows(side, label_column) if side.exists() else _tar_rows(src, shard, label_column)


def live_rows(src: Path, label_column: str | None = None) -> LiveRows:
    """Every live sample of ``src`` (the first row of a key repeated within a shard, as the reader keeps it)."""
    src = Path(src)
    shards = tuple(list_shards(src))
    if not shards:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    digest = hashlib.sha256()
    keys: list[str] = []
    shard_of: list[str] = []
    labels: list[Any] = []
    for shard in shards:
        digest.update(fingerprint_line(src, shard))
        seen: set[str] = set()
        for row in _shard_rows(src, shard, label_column):
            key = str(row["key"])
            if row.get("status") not in LIVE_SOURCE_STATUSES or key in seen:
                continue
            seen.add(key)
            keys.append(key)
            shard_of.append(shard)
            labels.append(row.get(label_column) if label_column else None)
    label_array = np.array([None if v is None else str(v) for v in labels], dtype=object) if label_column else None
    return LiveRows(shards, np.array(keys, dtype=object), np.array(shard_of, dtype=object), label_array,
                    digest.hexdigest()[:32])

__all__ = ["LIVE_SOURCE_STATUSES", "LiveRows", "dataset_fingerprint", "live_rows"]
