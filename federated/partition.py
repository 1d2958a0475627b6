"""Federated clients as keyed partitions of one shard folder: a table, never a copy of the data.

``make_partition`` assigns every live sample of a folder to one of N clients with a registered scheme
(``poisonlab.federated.schemes``) and writes ``partition.parquet`` (key, shard, client; sorted by client,
shard, key, so the same seed gives a byte-identical table whatever order shards were read in) and
``partition.json`` (scheme, parameters, seed, clients, per-client counts, the input's fingerprint), both
atomically, the record last. Clients then read their samples from the shared shards
(``poisonlab.federated.client_data``), and a partition refuses to be read against another dataset.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from poisonlab.federated.rows import LiveRows, live_rows
from poisonlab.federated.schemes import SCHEMES, PartitionError
from poisonlab.shards.layout import atomic_path, atomic_write_json

TABLE_FILE = "partition.parquet"
RECORD_FILE = "partition.json"
FORMAT_VERSION = 1
SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("client", pa.int32())])


@dataclasses.dataclass(frozen=True)
class PartitionRecord:
    """``partition.json``: what was partitioned, how, and how many samples each client holds."""

    scheme: str
    params: dict[str, Any]
    seed: int
    clients: int
    counts: tuple[int, ...]
    fingerprint: str
    shards: tuple[str, ...]

    @property
    def samples(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "scheme": self.scheme, "params": self.params, "seed": self.seed,
                "clients": self.clients, "counts": list(self.counts), "samples": self.samples,
                "fingerprint": self.fingerprint, "shards": list(self.shards)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PartitionRecord:
        return cls(str(raw["scheme"]), dict(raw["params"]), int(raw["seed"]), int(raw["clients"]),
                   tuple(int(c) for c in raw["counts"]), str(raw["fingerprint"]), tuple(raw["shards"]))


def assignment_table(rows: LiveRows, clients: np.ndarray) -> pa.Table:
    """(key, shard, client) sorted by client, shard, key: the bytes depend on the assignment alone."""
    table = pa.table({"key": pa.array(rows.keys.tolist(), pa.string()),
                      "shard": pa.array(rows.shard_of.tolist(), pa.string()),
                      "client": pa.array(clients.astype(np.int32))}, schema=SCHEMA)
    return table.sort_by([("client", "ascending"), ("shard", "ascending"), ("key", "ascending")])


def plan_partition(src: Path, clients: int, scheme: str = "iid", params: dict[str, Any] | None = None,
                   seed: int = 0) -> tuple[pa.Table, PartitionRecord]:
    """The assignment table and record for ``src``, computed from its sidecars (nothing written)."""
    if clients < 1:
        raise PartitionError(f"clients must be >= 1, not {clients}")
    component = SCHEMES.get(scheme)
    parsed = component.parse(params)
    chosen = component.create(parsed)
    rows = live_rows(Path(src), chosen.label_column)
    if len(rows) < clients:
        raise PartitionError(f"{clients} clients but only {len(rows)} live samples in {src}")
    assigned = chosen.assign(rows, clients, seed)
    counts = tuple(int(c) for c in np.bincount(assigned, minlength=clients))
    record = PartitionRecord(scheme, parsed.model_dump(), int(seed), clients, counts, rows.fingerprint, rows.shards)
    return assignment_table(rows, assigned), record


def write_partition(out: Path, table: pa.Table, record: PartitionRecord) -> Path:
    """Write the table, then the record (its presence says the partition is complete); both atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TABLE_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    atomic_write_json(out / RECORD_FILE, record.to_dict())
    return out


def make_partition(src: Path, out: Path, clients: int, scheme: str = "iid", params: dict[str, Any] | None = None,
                   seed: int = 0) -> PartitionRecord:
    """Partition ``src`` into ``clients`` and write it to ``out`` (which must not be ``src``)."""
    if Path(out).resolve() == Path(src).resolve():
        raise PartitionError("the partition folder must not be the shard folder it describes")
    table, record = plan_partition(src, clients, scheme, params, seed)
    write_partition(out, table, record)
    return record


def load_record(partition: Path) -> PartitionRecord:
    path = Path(partition) / RECORD_FILE
    if not path.is_file():
        raise PartitionError(f"{partition} is not a finished partition (no {RECORD_FILE})")
    try:
        return PartitionRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise PartitionError(f"{path}: unreadable partition record ({type(exc).__name__}: {exc})") from None


def client_keys(partition: Path, client: int) -> dict[str, frozenset[str]]:
    """Shard -> the keys of ``client`` in it (only shards where it has samples)."""
    record = load_record(partition)
    if not 0 <= client < record.clients:
        raise PartitionError(f"client {client} is not in this partition (clients 0..{record.clients - 1})")
    table = pq.read_table(Path(partition) / TABLE_FILE, filters=pc.field("client") == client,
                          columns=["key", "shard"])
    found: dict[str, set[str]] = {}
    for key, shard in zip(table.column("key").to_pylist(), table.column("shard").to_pylist(), strict=True):
        found.setdefault(shard, set()).add(key)
    return {shard: frozenset(keys) for shard, keys in sorted(found.items())}
