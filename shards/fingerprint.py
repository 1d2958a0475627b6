"""The identity of a shard folder, and the check that two outputs describe the same one.

The fingerprint is cheap and names the content, not the path: each shard contributes the sha256 of its
parquet sidecar (which lists every sample with its sha256, status and provenance), or the size of its tar
when it has no sidecar (a plain WebDataset folder). The attack planner, federated partitions, embedding
stores, score tables, exclusion tables and poison manifests all use this one formula, so any two of them
can be compared: a folder moved or copied keeps its fingerprint, another dataset (or a poisoned copy of
this one, whose sidecars differ) has another.

Outputs record a ``DatasetRef`` (the folder as it was named when the output was written, for messages,
and its fingerprint); ``check_same_dataset`` is the one comparison every command uses: a mismatch is a
one-line ``DatasetMismatchError`` naming both folders, unless forced; an output written before
fingerprints were recorded is accepted with a warning (returned, for the command to print).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.shards.layout import list_shards, sidecar_path, tar_path


class DatasetMismatchError(ValueError):
    """Two outputs describe different shard folders (scores of one dataset, a manifest of another)."""


def fingerprint_line(src: Path, shard: str) -> bytes:
    """A shard's line of the dataset fingerprint: its sidecar's sha256, or its tar's size without one."""
    side = sidecar_path(src, shard)
    if side.exists():
        return f"{shard}:{hashlib.sha256(side.read_bytes()).hexdigest()}\n".encode()
    return f"{shard}:tar:{tar_path(src, shard).stat().st_size}\n".encode()


def dataset_fingerprint(src: Path) -> str:
    """The fingerprint of a folder's shards (32 hex digits); no row is parsed, no tar read."""
    shards = list_shards(Path(src))
    if not shards:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    digest = hashlib.sha256()
    for shard in shards:
        digest.update(fingerprint_line(Path(src), shard))
    return digest.hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """The shard folder an output describes: where it was (for messages only) and what it held."""

    folder: str
    fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {"folder": self.folder, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, raw: Any) -> DatasetRef | None:
        """The reference a record holds, or None for a record written before fingerprints were kept."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("fingerprint"), str):
            return None
        return cls(str(raw.get("folder") or "?"), raw["fingerprint"])


def dataset_ref(folder: Path) -> DatasetRef:
    """The reference of ``folder`` as it is now (its absolute path and fingerprint)."""
    return DatasetRef(str(Path(folder).absolute()), dataset_fingerprint(Path(folder)))


def check_same_dataset(first: tuple[str, DatasetRef | None], second: tuple[str, DatasetRef | None],
                       force: bool = False) -> list[str]:
    """Refuse two outputs that describe different folders; returns warnings (old records, a forced mix).

    Each argument is (what the output is, e.g. ``"the scores in S"``, the folder it records); the message
    reads "the scores in S (FOLDER, fingerprint ...) and the manifest M (FOLDER, ...) describe different datasets".
    """
    (what_a, ref_a), (what_b, ref_b) = first, second
    if ref_a is None or ref_b is None:
        old = what_a if ref_a is None else what_b
        return [f"{old}: no dataset fingerprint recorded (written by an older poisonlab), so it is not "
                "checked against the other folder"]
    if ref_a.fingerprint == ref_b.fingerprint:
        return []
    message = (f"{what_a} ({ref_a.folder}, fingerprint {ref_a.fingerprint[:12]}) and {what_b} ({ref_b.folder}, "
               f"fingerprint {ref_b.fingerprint[:12]}) describe different datasets")
    return refuse_unless_forced(message, force, "use outputs of one dataset, or --force to combine them anyway",
                                "combined")


def refuse_unless_forced(message: str, force: bool, remedy: str, forced: str) -> list[str]:
    """A mismatch is an error saying what to do (``remedy``), or with ``force`` a warning saying it was
    ``forced`` through: one wording for every lineage check."""
    if not force:
        raise DatasetMismatchError(f"{message}; {remedy}")
    return [f"{message}, {forced} because of --force"]


FINGERPRINTS_META = b"poisonlab.fingerprints"  # parquet schema metadata: JSON list of fingerprints


def with_fingerprints(table: pa.Table, fingerprints: Sequence[str]) -> pa.Table:
    """``table`` recording the fingerprints of the shard folders it describes (a manifest, exclusions).

    Only fingerprints, never paths: the table's bytes must not depend on where the run wrote its output.
    A table may describe several folders (a poisoned output and a blind copy of it hold the same samples).
    """
    meta = dict(table.schema.metadata or {})
    meta[FINGERPRINTS_META] = json.dumps(sorted(set(fingerprints))).encode()
    return table.replace_schema_metadata(meta)


def table_fingerprints(path: Path) -> tuple[str, ...]:
    """The fingerprints a parquet table records; empty for a table written before they were kept."""
    meta = pq.read_schema(path).metadata or {}
    try:
        found = json.loads(meta.get(FINGERPRINTS_META, b"[]"))
    except ValueError:
        return ()
    return tuple(f for f in found if isinstance(f, str)) if isinstance(found, list) else ()


def table_ref(path: Path, describes: DatasetRef | None) -> DatasetRef | None:
    """The reference of a table for ``check_same_dataset``: the fingerprint it shares with ``describes``
    when it records that one, else its first; named by the folder the table lies in."""
    found = table_fingerprints(path)
    if not found:
        return None
    chosen = describes.fingerprint if describes is not None and describes.fingerprint in found else found[0]
    return DatasetRef(str(Path(path).absolute().parent), chosen)
