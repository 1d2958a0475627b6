"""Malicious clients' data poisoning: an attack applied to the malicious clients' partitions only.

The attack planner and poison job are the centralised ones (``attacks.job.prepare_poisoning``), given the
malicious clients' key sets as groups, so ``--count``/``--rate`` hold exactly within each malicious client's
partition and honest clients' samples are copied unchanged. The result is one poisoned folder with the same
keys as its source: the partition made on the source serves every client of it. Two files make that safe:

- the manifest gains a ``client`` column (the malicious client owning each poisoned sample);
- ``_run/federated_lineage.json`` records the source's fingerprint, the poisoned folder's own and the
  partition's, so ``client_data.check_dataset`` accepts the partition for exactly this poisoned copy (a
  copy changed afterwards has another fingerprint and is refused, as any other dataset is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.attacks.job import PoisonJob, prepare_poisoning
from poisonlab.attacks.manifest import read_manifest, write_manifest
from poisonlab.attacks.recipe import Recipe
from poisonlab.federated.lineage import LINEAGE_FILE
from poisonlab.federated.partition import TABLE_FILE, load_record
from poisonlab.federated.schemes import PartitionError
from poisonlab.pipelines.accounting import ShardResult
from poisonlab.pipelines.executor import ShardTask
from poisonlab.shards.fingerprint import dataset_fingerprint, with_fingerprints
from poisonlab.shards.layout import atomic_write_json, run_file


def client_group(client: int) -> str:
    """The planner's group name of a client (sorts in client order)."""
    return f"client-{client:04d}"


def key_clients(partition: Path) -> dict[str, int]:
    """Key -> client of every sample in the partition."""
    table = pq.read_table(Path(partition) / TABLE_FILE, columns=["key", "client"])
    return dict(zip(table.column("key").to_pylist(), table.column("client").to_pylist(), strict=True))


def malicious_groups(partition: Path, malicious: Sequence[int]) -> dict[str, frozenset[str]]:
    """Group name -> keys of every malicious client (a client outside the partition is an error)."""
    record = load_record(partition)
    bad = sorted(c for c in malicious if not 0 <= c < record.clients)
    if bad:
        raise PartitionError(f"malicious clients {bad} are not in the partition (clients 0..{record.clients - 1})")
    if not malicious:
        raise PartitionError("no malicious client given: data poisoning needs at least one")
    groups: dict[str, set[str]] = {client_group(c): set() for c in malicious}
    for key, client in key_clients(partition).items():
        if client in malicious:
            groups[client_group(client)].add(key)
    return {name: frozenset(keys) for name, keys in groups.items()}


@dataclasses.dataclass
class ClientPoisonJob:
    """The centralised poison job over the malicious groups, with a federated finalise step."""

    inner: PoisonJob
    partition: Path
    malicious: tuple[int, ...]

    def tasks(self) -> list[ShardTask]:
        return self.inner.tasks()

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        """The poison job's files, then the manifest's ``client`` column and the lineage record."""
        result = self.inner.finalize(results)
        table = read_manifest(self.inner.dst)
        owners = key_clients(self.partition)
        clients = pa.array([owners.get(k) for k in table.column("key").to_pylist()], pa.int32())
        fingerprint = result["fingerprint"]
        write_manifest(self.inner.dst, with_fingerprints(table.append_column("client", clients), [fingerprint]))
        record = load_record(self.partition)
        atomic_write_json(run_file(self.inner.dst, LINEAGE_FILE), {
            "source_fingerprint": record.fingerprint, "fingerprint": dataset_fingerprint(self.inner.dst),
            "partition": str(Path(self.partition).resolve()), "malicious": list(self.malicious)})
        per_client = {str(c): int(sum(1 for v in clients.to_pylist() if v == c)) for c in self.malicious}
        return {**result, "malicious": list(self.malicious), "poisoned_per_client": per_client}


def prepare_client_poisoning(src: Path, dst: Path, partition: Path, malicious: Sequence[int], recipe: Recipe,
                             base_dir: Path | None = None, overwrite: bool = False) -> ClientPoisonJob:
    """Validate and plan ``recipe`` within each malicious client's partition of ``src`` (nothing written but
    the spec). The partition must describe ``src`` itself."""
    found = dataset_fingerprint(Path(src))
    if found != load_record(partition).fingerprint:
        raise PartitionError(f"{src} is not the dataset {partition} partitions (fingerprint {found})")
    chosen = tuple(sorted(set(int(c) for c in malicious)))
    job = prepare_poisoning(src, dst, recipe, base_dir, overwrite, groups=malicious_groups(partition, chosen))
    return ClientPoisonJob(job, Path(partition), chosen)
