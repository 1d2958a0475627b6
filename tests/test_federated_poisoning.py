"""Malicious clients' data poisoning: the attack touches only the malicious partitions, with an exact count
within each, the manifest names the client, and the source's partition serves the poisoned copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from poisonlab.attacks.manifest import read_manifest
from poisonlab.attacks.recipe import Recipe, RecipeError
from poisonlab.federated.client_data import check_dataset, client_samples
from poisonlab.federated.partition import client_keys, make_partition
from poisonlab.federated.poisoning import prepare_client_poisoning
from poisonlab.federated.schemes import PartitionError
from poisonlab.pipelines.job import run_job_local

MALICIOUS = (0, 2)


def _recipe(**amount: float) -> Recipe:
    return Recipe.model_validate({"seed": 3, "attacks": [
        {"attack": "badnets", "target": "red circle", **amount, "params": {"pattern": "checkerboard"}}]})


@pytest.fixture(scope="module")
def poisoned(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fedpoison")
    part = root / "part"
    make_partition(tiny_shards, part, clients=5, scheme="iid", seed=0)
    dst = root / "poisoned"
    run_job_local(prepare_client_poisoning(tiny_shards, dst, part, MALICIOUS, _recipe(count=7)))
    return part, dst


def _keys(part: Path, client: int) -> set[str]:
    return {k for ks in client_keys(part, client).values() for k in ks}


def test_poisoned_samples_are_exactly_count_per_malicious_client(poisoned: tuple[Path, Path]) -> None:
    part, dst = poisoned
    table = read_manifest(dst).to_pylist()
    assert len(table) == 7 * len(MALICIOUS)
    for client in MALICIOUS:
        rows = [r for r in table if r["client"] == client]
        assert len(rows) == 7 and {r["key"] for r in rows} <= _keys(part, client)
    honest = set().union(*(_keys(part, c) for c in range(5) if c not in MALICIOUS))
    assert not honest & {r["key"] for r in table}


def test_honest_clients_read_unchanged_samples_from_the_poisoned_copy(tiny_shards: Path,
                                                                      poisoned: tuple[Path, Path]) -> None:
    part, dst = poisoned
    check_dataset(part, dst)  # the source's partition serves its poisoned copy
    for client in (1, 3):
        before = {s.key: s.payload for s in client_samples(tiny_shards, part, client)}
        after = {s.key: s.payload for s in client_samples(dst, part, client)}
        assert before == after
    changed = {s.key for s in client_samples(dst, part, 0)} & {r["key"] for r in read_manifest(dst).to_pylist()}
    assert len(changed) == 7


def test_a_changed_poisoned_copy_is_refused(poisoned: tuple[Path, Path], tmp_path: Path) -> None:
    part, dst = poisoned
    copy = tmp_path / "copy"
    shutil.copytree(dst, copy)
    table = pq.read_table(copy / "00001.parquet")
    pq.write_table(table.slice(1), copy / "00001.parquet")
    with pytest.raises(PartitionError, match="is not the dataset"):
        check_dataset(part, copy)


def test_rate_is_within_each_partition_and_bad_inputs_are_one_line(tiny_shards: Path, poisoned: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    part, _ = poisoned
    job = prepare_client_poisoning(tiny_shards, tmp_path / "r", part, (1,), _recipe(rate=0.25))
    assert job.inner.spec.attacks[0].planned == round(0.25 * len(_keys(part, 1)))
    with pytest.raises(PartitionError, match="not in the partition"):
        prepare_client_poisoning(tiny_shards, tmp_path / "x", part, (9,), _recipe(count=1))
    with pytest.raises(RecipeError, match="client-0001"):
        prepare_client_poisoning(tiny_shards, tmp_path / "y", part, (1,), _recipe(count=1000))


def test_federate_poison_command(tiny_shards: Path, poisoned: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    import poisonlab.flows.cli.federate  # noqa: F401  (registers the sub-app)
    from poisonlab.flows.cli.app import app

    part, _ = poisoned
    args = ["federate", "poison", "--in", str(tiny_shards), "--partition", str(part), "--malicious", "1,3",
            "--attack", "badnets", "--count", "5", "--target", "red circle", "--executor", "local"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["poisoned_per_client"] == {"1": 5, "3": 5}
    bad = CliRunner().invoke(app, [*args[:7], "7", *args[8:], "--out", str(tmp_path / "q")])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "not in the partition" in lines[0], bad.output
