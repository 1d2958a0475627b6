"""One client's part of a round as a task of the job protocol: train locally, write the update.

A client task is a ``ShardTask`` whose "shard" is the client (``r0003-c0007``): its source yields no sample
(the client streams its own partition inside ``local_update``), its sink trains, so every runner that runs
shard tasks (in-process, Prefect on Dask, an existing cluster) runs clients unchanged, checks their paths
where they run, and skips a client whose update is already written (a rerun after a kill). The task:

1. starts ``local_update`` from the round's global weights (a fresh optimiser, as FedAvg clients do) on the
   client's partition for ``steps`` steps, its data order keyed by (seed, round, client);
2. sends ``local - global``, scaled by the model-replacement boost when the client is malicious and the run
   says so (the attacker's own step, done before the update leaves it);
3. embeds the clean probe with the encoder the server receives (global + delta), for client inspection.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from poisonlab.federated.client_data import client_shard_set
from poisonlab.federated.malicious import model_replacement
from poisonlab.federated.probe import embed_probe
from poisonlab.federated.reuse import reused_objective
from poisonlab.federated.store import (
    PROBE_FILE,
    client_file,
    clients_dir,
    global_before,
    load_tensors,
    save_tensors,
)
from poisonlab.federated.updates import apply_delta, model_delta
from poisonlab.pipelines.accounting import ShardResult, ShardStats, StageCounts
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.visibility import TaskPaths
from poisonlab.shards.layout import atomic_write_json
from poisonlab.training.config import TrainSettings
from poisonlab.training.loop import local_update
from poisonlab.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class ClientRound:
    """What every client task of one round shares (small and picklable: paths, settings, numbers)."""

    run: str
    shards: str
    partition: str
    round: int
    settings: TrainSettings
    steps: int
    seed: int
    malicious: tuple[int, ...] = ()
    boost: float | None = None
    norm_bound: float | None = None
    probe: bool = True


def task_name(round_: int, client: int) -> str:
    return f"r{round_:04d}-c{client:04d}"


def client_of(name: str) -> int:
    return int(name.rsplit("-c", 1)[1])


def local_settings(spec: ClientRound, client: int) -> TrainSettings:
    """The client's settings: its data order and dropout keyed by (seed, round, client)."""
    seed = keyed_u64(spec.seed, "federated/local", f"{spec.round}/{client}") % 2**31
    return spec.settings.model_copy(update={"seed": seed})


@dataclasses.dataclass(frozen=True)
class NoSamples:
    """The source of a client task: nothing flows through the stage chain (the client reads its own data)."""

    spec: ClientRound

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        return iter(())

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(read=(self.spec.shards, self.spec.partition, str(global_before(Path(self.spec.run),
                                                                                        self.spec.round))))


@dataclasses.dataclass(frozen=True)
class ClientTrainer:
    """The sink of a client task: trains the client and writes its update, embeddings and record (last)."""

    spec: ClientRound

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(write=(str(clients_dir(Path(self.spec.run), self.spec.round)),))

    def __call__(self, shard: str, samples: Iterable[Sample], counts: list[StageCounts],
                 shard_errors: list[str]) -> ShardResult:
        for _ in samples:  # the (empty) stream is drained so the executor's books close
            pass
        result = train_client(self.spec, client_of(shard))
        return ShardResult(ShardStats(shard=shard, stages=counts), result=result)


def train_client(spec: ClientRound, client: int) -> dict[str, Any]:
    """Local training of one client from the round's global weights; returns its record (also written)."""
    run = Path(spec.run)
    start = load_tensors(global_before(run, spec.round))
    data = client_shard_set(Path(spec.shards), Path(spec.partition), client)
    settings = local_settings(spec, client)
    state, stats = local_update(TrainState(weights=start), data, settings, steps=spec.steps,
                                objective=reused_objective(settings))
    delta = model_delta(state.weights, start)
    boosted = client in spec.malicious and spec.boost is not None
    if boosted:
        delta = model_replacement(delta, spec.boost, spec.norm_bound)  # type: ignore[arg-type]
    save_tensors(client_file(run, spec.round, client, ".safetensors"), delta)
    if spec.probe:
        images = load_tensors(run / PROBE_FILE)["images"]
        embedded = embed_probe(apply_delta(start, delta), spec.settings.model, images)
        save_tensors(client_file(run, spec.round, client, ".probe.safetensors"), {"embeddings": embedded})
    record = {"client": client, "round": spec.round, "samples": data.samples, "steps": stats.steps,
              "trained_samples": stats.samples, "mean_loss": stats.mean_loss, "seconds": stats.seconds,
              "boosted": boosted}
    atomic_write_json(client_file(run, spec.round, client, ".json"), record)
    return record


def _done(spec: ClientRound) -> Any:
    return lambda shard: client_file(Path(spec.run), spec.round, client_of(shard), ".json").is_file()


def _load_done(spec: ClientRound) -> Any:
    def load(shard: str) -> ShardResult:
        path = client_file(Path(spec.run), spec.round, client_of(shard), ".json")
        return ShardResult(ShardStats(shard=shard), result=json.loads(path.read_text(encoding="utf-8")))
    return load


def client_tasks(spec: ClientRound, clients: Iterable[int]) -> list[ShardTask]:
    """One task per sampled client of the round; a client whose record exists is skipped when it runs."""
    clients_dir(Path(spec.run), spec.round).mkdir(parents=True, exist_ok=True)
    return [ShardTask(task_name(spec.round, c), NoSamples(spec), (), ClientTrainer(spec), is_done=_done(spec),
                      load_done=_load_done(spec)) for c in clients]
