"""A client's data is its keys, read from the shared shards: the stream yields exactly them, and training on
the partition is training on a folder that holds only the client's samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from poisonlab.federated.client_data import ClientSource, client_samples, client_shard_set, client_source
from poisonlab.federated.partition import client_keys, load_record, make_partition
from poisonlab.federated.schemes import PartitionError
from poisonlab.pipelines.executor import run_local
from poisonlab.shards.plan import finalize_folder, plan_source_tasks
from poisonlab.training import TrainSettings, local_update
from poisonlab.training.data import StreamSpec, iterate_epoch
from poisonlab.training.objectives import get_objective

SETTINGS = TrainSettings(epochs=1, batch_size=16, lr=5e-4, warmup_steps=1, shuffle_buffer=32, workers=0,
                         device="cpu", log_every=1, threads=1)


@pytest.fixture(scope="module")
def partition(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("partition") / "p"
    make_partition(tiny_shards, out, clients=3, scheme="dirichlet", params={"alpha": 0.5}, seed=1)
    return out


def _all_keys(keys: dict[str, frozenset[str]]) -> set[str]:
    return {k for ks in keys.values() for k in ks}


def test_a_clients_stream_yields_exactly_its_keys(tiny_shards: Path, partition: Path) -> None:
    seen: list[str] = []
    for client in range(3):
        keys = _all_keys(client_keys(partition, client))
        samples = list(client_samples(tiny_shards, partition, client))
        assert [s.key for s in samples if s.is_live] == [s.key for s in samples]
        assert sorted(s.key for s in samples) == sorted(keys)
        assert all(s.payload for s in samples)
        seen += [s.key for s in samples]
    assert len(seen) == len(set(seen)) == load_record(partition).samples == 240


def test_a_client_source_reads_only_the_shards_it_has(tiny_shards: Path, partition: Path) -> None:
    source = client_source(tiny_shards, partition, 0)
    assert isinstance(source, ClientSource) and source.shards == tuple(sorted(client_keys(partition, 0)))
    assert list(source("99999", [])) == []  # a shard without this client's keys is never opened


def test_a_partition_refuses_another_dataset(tiny_shards: Path, partition: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_shards, other)
    (other / "00003.parquet").unlink()
    with pytest.raises(PartitionError, match="is not the dataset"):
        client_shard_set(other, partition, 0)
    with pytest.raises(PartitionError, match="not a finished partition"):
        client_shard_set(tiny_shards, tmp_path, 0)


def test_training_batches_hold_only_the_clients_keys(tiny_shards: Path, partition: Path) -> None:
    shard_set = client_shard_set(tiny_shards, partition, 1)
    keys = _all_keys(client_keys(partition, 1))
    assert shard_set.samples == len(keys) == load_record(partition).counts[1]
    codec = get_objective(SETTINGS).build(SETTINGS).codec
    spec = StreamSpec(shard_set, batch_size=8, seed=0, shuffle_buffer=16, partial=True)
    batches = list(iterate_epoch(spec, 0, codec))
    trained = [k for b in batches for k in b.keys]
    assert sorted(trained) == sorted(keys)
    assert not any(b.skipped for b in batches)  # other clients' samples are not "skipped": not this set's data


def _copy_of_client(src: Path, partition: Path, client: int, dst: Path) -> Path:
    """A shard folder holding only the client's samples (same shard names, same order), written by the
    ordinary shard writer from the client's source."""
    source = client_source(src, partition, client)
    finalize_folder(dst, run_local(plan_source_tasks(source, source.shards, dst)))
    return dst


def test_local_update_on_a_partition_is_training_on_the_clients_samples_alone(
        tiny_shards: Path, partition: Path, tmp_path: Path) -> None:
    client = 2
    copy = _copy_of_client(tiny_shards, partition, client, tmp_path / "client2")
    on_partition, stats = local_update(None, client_shard_set(tiny_shards, partition, client), SETTINGS, steps=3)
    on_copy, copy_stats = local_update(None, copy, SETTINGS, steps=3)
    assert stats.steps == copy_stats.steps == 3 and stats.samples == 48
    for name, value in on_copy.weights.items():
        assert torch.equal(value, on_partition.weights[name]), name
    other, _ = local_update(None, client_shard_set(tiny_shards, partition, 0), SETTINGS, steps=3)
    assert any(not torch.equal(other.weights[n], on_partition.weights[n]) for n in other.weights)
