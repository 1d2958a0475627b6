"""What the planner knows of a dataset before any work: keys, captions and statuses, from the sidecars.

Reading the parquet sidecars is enough to plan an exact count over the whole dataset (no tar is opened,
no image decoded). A shard without a sidecar (a plain WebDataset tar) is streamed once instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from poisonlab.attacks.base import Candidate
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.fingerprint import fingerprint_line
from poisonlab.shards.images import IMAGE_EXTENSIONS
from poisonlab.shards.layout import list_shards, sidecar_path
from poisonlab.shards.reader import read_shard

# img2dataset marks downloaded rows "success"; ours are ok/changed/added.
LIVE_SOURCE_STATUSES = LIVE_STATUSES | {"success"}
_COLUMNS = ("key", "status", "caption", "payload_ext", "provenance")


@dataclasses.dataclass
class DatasetIndex:
    """Live samples of a folder, in shard then sidecar order (the order never matters for the plan)."""

    shards: tuple[str, ...]
    candidates: list[Candidate]  # live samples that no earlier poisoning run touched
    total: int  # live samples, the base of --rate
    keys: set[str]  # every key, live or not (added keys must not collide with them)
    fingerprint: str  # identity of the input (``shards.fingerprint``), part of the run id
    classnames: tuple[str, ...] | None  # from classes.json when the dataset ships one


def _classnames(src: Path) -> tuple[str, ...] | None:
    for path in (src / "classes.json", src / "eval" / "classes.json"):
        if path.is_file():
            names = json.loads(path.read_text(encoding="utf-8")).get("classnames")
            if isinstance(names, list) and all(isinstance(n, str) for n in names):
                return tuple(names)
    return None


def _poisoned_before(provenance: str | None) -> bool:
    if not provenance:
        return False
    try:
        record = json.loads(provenance)
    except ValueError:
        return False
    return isinstance(record, dict) and "attack" in record


def _rows_from_sidecar(path: Path) -> list[dict]:
    schema = pq.read_schema(path)
    table = pq.read_table(path, columns=[c for c in _COLUMNS if c in schema.names])
    return table.to_pylist()


def _rows_from_tar(src: Path, shard: str) -> list[dict]:
    policy = read_policy_for(src, probe_images=False)  # the folder's modality, without decoding
    return [
        {"key": s.key, "status": s.status, "caption": s.text, "payload_ext": s.payload_ext if s.payload else None,
         "provenance": json.dumps(s.meta["poisonlab"]) if "poisonlab" in s.meta else None}
        for s in read_shard(src, shard, policy)
    ]


def index_dataset(src: Path) -> DatasetIndex:
    src = Path(src)
    shards = list_shards(src)
    if not shards:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    fingerprint = hashlib.sha256()
    candidates: list[Candidate] = []
    keys: set[str] = set()
    total = 0
    for shard in shards:
        side = sidecar_path(src, shard)
        if side.exists():
            rows = _rows_from_sidecar(side)
        else:
            rows = _rows_from_tar(src, shard)
        fingerprint.update(fingerprint_line(src, shard))
        seen: set[str] = set()
        for row in rows:
            key = str(row["key"])
            keys.add(key)
            if row.get("status") not in LIVE_SOURCE_STATUSES or key in seen:
                continue
            seen.add(key)
            total += 1
            if _poisoned_before(row.get("provenance")):
                continue  # an earlier run's poisoned sample is never poisoned twice
            ext = row.get("payload_ext")
            candidates.append(Candidate(shard, key, row.get("caption"), ext is None or ext in IMAGE_EXTENSIONS, ext))
    return DatasetIndex(tuple(shards), candidates, total, keys, fingerprint.hexdigest()[:32], _classnames(src))
