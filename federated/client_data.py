"""A client's data: its partition's samples, streamed from the shared shards (nothing is copied).

Every read goes through ``shards.reader.read_shard`` with the folder's read policy (``read_policy_for``), so
a client sees exactly what any other stage sees of its samples. ``ClientSource`` is a shard source (the
``FolderSource`` signature: a job can run stages over one client's samples), ``client_shard_set`` is what
``training.local_update`` trains a client on. Both first check that the shard folder is the one the
partition was made from (its fingerprint), so a partition is never read against another dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

from poisonlab.federated.lineage import read_lineage
from poisonlab.federated.partition import client_keys, load_record
from poisonlab.federated.rows import dataset_fingerprint
from poisonlab.federated.schemes import PartitionError
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.reader import ReadPolicy, ReadReport, read_shard
from poisonlab.training.data import ShardSet


def check_dataset(partition: Path, shards: Path) -> None:
    """Refuse a shard folder other than the one ``partition`` describes (fingerprints differ), except a
    poisoned copy of it made by ``federated.poisoning`` and unchanged since (its lineage names the
    partition's dataset as its source and its own fingerprint as the one it still has)."""
    record = load_record(partition)
    found = dataset_fingerprint(Path(shards))
    lineage = read_lineage(Path(shards)) or {}
    derived = lineage.get("source_fingerprint") == record.fingerprint and lineage.get("fingerprint") == found
    if found != record.fingerprint and not derived:
        raise PartitionError(f"{shards} is not the dataset {partition} partitions (fingerprint {found}, "
                             f"partition made from {record.fingerprint})")


@dataclasses.dataclass(frozen=True)
class ClientSource:
    """The samples of one client in a shard, read from the shared folder; other clients' keys are skipped."""

    directory: str
    keys: Mapping[str, frozenset[str]]  # shard -> this client's keys
    policy: ReadPolicy = ReadPolicy()

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(sorted(self.keys))

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        wanted = self.keys.get(shard, frozenset())
        if not wanted:
            return
        yield from read_shard(Path(self.directory), shard, self.policy, ReadReport(shard_errors=shard_errors), wanted)


def client_source(shards: Path, partition: Path, client: int, check: bool = True) -> ClientSource:
    """The source of ``client``'s samples in ``shards``, read with the folder's policy."""
    if check:
        check_dataset(partition, shards)
    return ClientSource(str(Path(shards)), client_keys(partition, client), read_policy_for(Path(shards)))


def client_samples(shards: Path, partition: Path, client: int) -> Iterator[Sample]:
    """Every sample of ``client`` (errors included, as the reader reports them), shard by shard."""
    source = client_source(shards, partition, client)
    for shard in source.shards:
        yield from source(shard, [])


def client_shard_set(shards: Path, partition: Path, client: int, check: bool = True) -> ShardSet:
    """What ``local_update(state, client_shard_set(...), settings)`` trains one client on: the shards holding
    its samples, restricted to its keys, with its live count (the schedule's base)."""
    if check:
        check_dataset(partition, shards)
    keys = client_keys(partition, client)
    if not keys:
        raise PartitionError(f"client {client} has no samples in {partition}")
    return ShardSet(Path(shards), tuple(sorted(keys)), sum(len(k) for k in keys.values()), keys=keys)
