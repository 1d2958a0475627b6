"""Federated rounds: keyed client sampling, the server step, resuming after a kill, the same weights on any runner.

Tiny data (240 generated pairs), 4 clients, 2 per round, 2 local steps of 8 pairs: every run here takes
seconds, and its global weights are compared bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from poisonlab.federated.experiment import (
    FederatedExperiment,
    ensure_partition,
    ensure_poisoned,
    prepare_run,
    run_rounds,
)
from poisonlab.federated.recipe import FederatedRecipeError, parse_federated_recipe
from poisonlab.federated.rounds import RoundJob, sample_clients
from poisonlab.federated.store import GLOBAL_FILE, client_file, finished_rounds, load_tensors, round_dir
from poisonlab.pipelines.job import run_job_local

TRAIN = {"batch_size": 8, "lr": 5e-4, "warmup_steps": 0, "workers": 0, "device": "cpu", "threads": 1,
         "shuffle_buffer": 16, "epochs": 1}


def recipe(**changes: Any) -> Any:
    raw = {"name": "tiny", "seed": 1, "data": {"shards": "unused"}, "partition": {"clients": 4},
           "malicious": {"clients": [0], "attack": {"attack": "badnets", "target": "red circle", "rate": 0.5,
                                                    "params": {"pattern": "checkerboard"}}, "boost": 2.0},
           "rounds": 3, "clients_per_round": 2, "local_steps": 2, "train": TRAIN, "probe": {"images": 8},
           "aggregators": [{"name": "fedavg"}]}
    raw.update(changes)
    return parse_federated_recipe(raw)


def experiment(tiny_shards: Path, eval_split: Path, out: Path, **changes: Any) -> FederatedExperiment:
    exp = FederatedExperiment(recipe(**changes), out, tiny_shards, eval_split, out)
    ensure_partition(exp)
    ensure_poisoned(exp, run_job_local)
    return exp


def final_weights(run: Path, rounds: int) -> dict[str, torch.Tensor]:
    return load_tensors(round_dir(run, rounds - 1) / GLOBAL_FILE)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tiny_shards: Path, eval_split: Path, tmp_path_factory: pytest.TempPathFactory) -> FederatedExperiment:
    """An uninterrupted in-process run of 3 rounds."""
    exp = experiment(tiny_shards, eval_split, tmp_path_factory.mktemp("fedref"))
    run_rounds(prepare_run(exp, exp.recipe.aggregators[0]), run_job_local, None)
    return exp


def test_client_sampling_is_keyed_by_seed_and_round() -> None:
    first = sample_clients(0, 3, list(range(10)), 4)
    assert first == sample_clients(0, 3, list(reversed(range(10))), 4)  # order of the eligible list is irrelevant
    assert len(first) == 4 and list(first) == sorted(first)
    assert len({sample_clients(0, r, list(range(10)), 4) for r in range(8)}) > 1  # rounds differ
    assert sample_clients(1, 3, list(range(10)), 4) != first or sample_clients(2, 3, list(range(10)), 4) != first


def test_a_round_writes_updates_scores_and_global_weights(reference: FederatedExperiment) -> None:
    run = reference.run_dir("fedavg")
    assert finished_rounds(run) == 3
    for r in range(3):
        record = json.loads((round_dir(run, r) / "round.json").read_text())
        clients = record["clients"]
        assert tuple(clients) == sample_clients(1, r, [0, 1, 2, 3], 2)
        table = pq.read_table(round_dir(run, r) / "inspection.parquet").to_pylist()
        assert [row["client"] for row in table] == clients
        assert all({"norm", "cosine", "eminspector", "flagged"} <= set(row) for row in table)
        for c in clients:
            assert client_file(run, r, c, ".safetensors").is_file()
            stats = json.loads(client_file(run, r, c, ".json").read_text())
            assert stats["steps"] == 2 and stats["boosted"] == (c == 0)


def test_resume_after_a_kill_mid_round_gives_the_same_weights(reference: FederatedExperiment, tiny_shards: Path,
                                                              eval_split: Path, tmp_path: Path) -> None:
    exp = experiment(tiny_shards, eval_split, tmp_path / "killed")
    fr = prepare_run(exp, exp.recipe.aggregators[0])

    class Killed(RuntimeError):
        pass

    def dies_in_round_1(job: RoundJob) -> dict[str, Any]:
        tasks = job.tasks()
        if job.round == 1:
            run_job_local(type("Half", (), {"tasks": lambda self: tasks[:1], "finalize": lambda self, r: {}})())
            raise Killed("killed after the first client of round 1")
        return run_job_local(job)

    with pytest.raises(Killed):
        run_rounds(fr, dies_in_round_1, None)
    assert finished_rounds(fr.run) == 1
    run_rounds(fr, run_job_local, None)
    assert same(final_weights(fr.run, 3), final_weights(reference.run_dir("fedavg"), 3))
    # a server step killed after writing the global weights but before the record: the round is redone
    last = round_dir(fr.run, 2)
    (last / "round.json").unlink()
    (last / GLOBAL_FILE).write_bytes(b"truncated")
    run_rounds(fr, run_job_local, None)
    assert same(final_weights(fr.run, 3), final_weights(reference.run_dir("fedavg"), 3))


def test_inspection_can_exclude_clients_before_fedavg(tiny_shards: Path, eval_split: Path, tmp_path: Path) -> None:
    exp = experiment(tiny_shards, eval_split, tmp_path / "inspect", malicious={
        "clients": [0], "boost": 50.0}, rounds=2, clients_per_round=3,
        aggregators=[{"name": "fedavg", "id": "inspected", "inspection": {"score": "norm", "ratio": 3.0}}])
    fr = prepare_run(exp, exp.recipe.aggregators[0])
    run_rounds(fr, run_job_local, None)
    for r in range(2):
        record = json.loads((round_dir(fr.run, r) / "round.json").read_text())
        assert record["inspection_excluded"] == ([0] if 0 in record["clients"] else [])
        assert 0 not in record["aggregate"]["kept"]


def test_bad_recipes_are_one_line_errors() -> None:
    with pytest.raises(FederatedRecipeError, match="clients_per_round 5 > clients 4"):
        recipe(clients_per_round=5)
    with pytest.raises(FederatedRecipeError, match="malicious clients \\[7\\]"):
        recipe(malicious={"clients": [7], "boost": 2.0})
    with pytest.raises(FederatedRecipeError, match="unique"):
        recipe(aggregators=[{"name": "fedavg"}, {"name": "fedavg"}])


def test_same_weights_with_two_dask_workers(reference: FederatedExperiment, tiny_shards: Path, eval_split: Path,
                                            tmp_path: Path, prefect_harness, dask_cluster: Path) -> None:
    from dask_cluster import address_of

    from poisonlab.flows.runtime import RunnerSpec, job_runner

    exp = experiment(tiny_shards, eval_split, tmp_path / "dask")
    fr = prepare_run(exp, exp.recipe.aggregators[0])
    runner = job_runner(RunnerSpec(executor="prefect", dask_address=address_of(dask_cluster), progress=False,
                                   quiet=True), "round")
    run_rounds(fr, runner, None)
    assert same(final_weights(fr.run, 3), final_weights(reference.run_dir("fedavg"), 3))
    shutil.rmtree(exp.out)
