"""Federation overhead: one round's wall time vs the same local training done centrally in one process.

The baseline runs ``local_update`` for each of the round's clients one after another in this process (the
same partitions, settings and steps, nothing written). The round runs the same clients as tasks of the job
protocol: in-process (``run_job_local``), then as a Prefect flow on a local Dask cluster of 1 and of 2
workers (the cluster and Prefect's server are started before the clock starts, as ``federate train`` starts
them once for all rounds). A round pays for writing the updates, embedding the probe, inspection, the server
step and, on Dask, shipping tasks; with 2 workers the clients train in parallel. Both sides are timed
warm (the second round; the baseline after one untimed step), as the rounds of a run after the first are.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from run import Row

CLIENTS = 4
STEPS = 10
BATCH = 32


def _data(root: Path, samples: int) -> tuple[Path, Path]:
    from poisonlab.flows.datasets import synth_dataset
    from poisonlab.flows.runtime import RunnerSpec
    from poisonlab.shards.synth import SynthSpec

    synth_dataset(root / "data", SynthSpec(samples=samples, seed=0, samples_per_shard=500), 4,
                  RunnerSpec(executor="local", progress=False, quiet=True))
    return root / "data", root / "data" / "eval"


def _experiment(root: Path, shards: Path, eval_dir: Path):  # type: ignore[no-untyped-def]
    from poisonlab.federated.experiment import FederatedExperiment, ensure_partition
    from poisonlab.federated.recipe import parse_federated_recipe

    recipe = parse_federated_recipe({
        "data": {"shards": str(shards)}, "partition": {"clients": CLIENTS}, "rounds": 2,
        "clients_per_round": CLIENTS, "local_steps": STEPS, "probe": {"images": 32},
        "train": {"batch_size": BATCH, "lr": 5e-4, "warmup_steps": 0, "workers": 0, "device": "cpu", "threads": 1},
        "aggregators": [{"name": "fedavg"}]})
    exp = FederatedExperiment(recipe, root, shards, eval_dir, root)
    ensure_partition(exp)
    return exp


def _central(exp) -> float:  # type: ignore[no-untyped-def]
    from poisonlab.federated.client_data import client_shard_set
    from poisonlab.federated.client_task import local_settings
    from poisonlab.federated.experiment import prepare_run
    from poisonlab.federated.store import INITIAL_FILE, load_tensors
    from poisonlab.training.loop import local_update
    from poisonlab.training.state import TrainState

    fr = prepare_run(exp, exp.recipe.aggregators[0])
    start = load_tensors(fr.run / INITIAL_FILE)
    spec = fr.client_round(1)
    clients = fr.clients(1)
    local_update(TrainState(weights=start), client_shard_set(exp.shards, exp.partition, clients[0]),
                 local_settings(spec, clients[0]), steps=1)  # warm-up: imports, first model build
    began = time.perf_counter()
    for client in clients:
        local_update(TrainState(weights=start), client_shard_set(exp.shards, exp.partition, client),
                     local_settings(spec, client), steps=STEPS)
    return time.perf_counter() - began


def _round(exp, label: str, runner) -> float:  # type: ignore[no-untyped-def]
    from poisonlab.federated.experiment import prepare_run
    from poisonlab.federated.rounds import RoundJob

    spec = exp.recipe.aggregators[0].model_copy(update={"id": label})
    fr = prepare_run(exp, spec)
    runner(RoundJob(fr, 0))  # warm-up round: workers import torch and build their model once
    began = time.perf_counter()
    runner(RoundJob(fr, 1))
    return time.perf_counter() - began


def _on_dask(exp, workers: int) -> float:  # type: ignore[no-untyped-def]
    from distributed import LocalCluster

    from poisonlab.flows import prefect_api
    from poisonlab.flows.runtime import RunnerSpec, job_runner

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            prefect_api.api_server(quiet=True):
        runner = job_runner(RunnerSpec(executor="prefect", dask_address=cluster.scheduler_address, progress=False,
                                       quiet=True), "round")
        return _round(exp, f"dask{workers}", runner)


def run(quick: bool) -> list[Row]:
    from poisonlab.pipelines.job import run_job_local

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards, eval_dir = _data(root, 1000 if quick else 2000)
        exp = _experiment(root / "fed", shards, eval_dir)
        central = _central(exp)
        local = _round(exp, "local", run_job_local)
        rows = [Row("federated round, in-process (4 clients x 10 steps of 32)", local, "s", central,
                    "same local training, one process", higher_is_better=False,
                    note="overhead: update files, probe embedding, inspection, server step")]
        for workers in (1, 2):
            seconds = _on_dask(exp, workers)
            rows.append(Row(f"federated round, Prefect on Dask, {workers} worker(s)", seconds, "s", central,
                            "same local training, one process", higher_is_better=False,
                            note="cluster and Prefect server started before timing"))
        return rows
