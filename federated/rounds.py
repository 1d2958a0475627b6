"""Rounds: a keyed sample of clients trains locally (one task each), then the server step aggregates.

A round is a job of the one job protocol (``RoundJob``): ``tasks()`` are the sampled clients' tasks
(``client_task``), any runner executes them, and ``finalize`` is the server step: read the updates as
written, score the clients (``inspection``), exclude the flagged ones when the aggregator asks for it,
aggregate with the registered rule and write the new global weights and the round record, the record last.
A rerun finds the rounds already finished (``store.finished_rounds``) and resumes at the next; within an
unfinished round, clients whose update is written are not trained again. Every choice is keyed by (seed,
round, client), and updates are re-read from their files, so an interrupted run ends with the same weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from poisonlab.federated.aggregators import AGGREGATORS
from poisonlab.federated.client_task import ClientRound, client_of, client_tasks
from poisonlab.federated.inspection import flag, inspection_table, score_round
from poisonlab.federated.malicious import scale_delta
from poisonlab.federated.recipe import AggregatorSpec, FederatedRecipe
from poisonlab.federated.store import (
    GLOBAL_FILE,
    INSPECTION_FILE,
    client_file,
    global_before,
    load_tensors,
    round_dir,
    save_tensors,
    write_round_record,
)
from poisonlab.federated.updates import ClientUpdate, apply_delta
from poisonlab.pipelines.accounting import ShardResult
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.shards.layout import atomic_path


def sample_clients(seed: int, round_: int, eligible: Sequence[int], k: int) -> tuple[int, ...]:
    """The ``k`` eligible clients with the smallest keyed rank for (seed, round), in client order."""
    ranked = sorted(eligible, key=lambda c: (keyed_u64(seed, "federated/round", f"{round_}/{c}"), c))
    return tuple(sorted(ranked[:k]))


@dataclasses.dataclass(frozen=True)
class FederatedRun:
    """One aggregator's run of a recipe: where it writes and what its rounds read."""

    recipe: FederatedRecipe
    aggregator: AggregatorSpec
    run: Path
    shards: Path
    partition: Path

    def eligible(self) -> list[int]:
        """Every client, or only the honest ones for the no-attack reference."""
        clients = range(self.recipe.partition.clients)
        bad = set(self.recipe.malicious.clients)
        return [c for c in clients if not (self.aggregator.honest_only and c in bad)]

    def clients(self, round_: int) -> tuple[int, ...]:
        return sample_clients(self.recipe.seed, round_, self.eligible(), self.recipe.clients_per_round)

    def client_round(self, round_: int) -> ClientRound:
        m = self.recipe.malicious
        return ClientRound(str(self.run.resolve()), str(self.shards.resolve()), str(self.partition.resolve()),
                           round_, self.recipe.train, self.recipe.local_steps, self.recipe.seed,
                           tuple(m.clients), m.boost, m.norm_bound, probe=True)


def _inspect(job: RoundJob, updates: list[ClientUpdate]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    embeddings = {u.client: load_tensors(client_file(job.run.run, job.round, u.client, ".probe.safetensors"))
                  ["embeddings"] for u in updates}
    scores = score_round(updates, embeddings)
    rule = job.run.aggregator.inspection
    flagged = flag(scores[rule.score], rule.ratio) if rule is not None else np.zeros(len(updates), dtype=bool)
    return scores, flagged


@dataclasses.dataclass(frozen=True)
class RoundJob:
    """One round as a job: client tasks, then the server step in ``finalize``."""

    run: FederatedRun
    round: int

    def tasks(self) -> list[ShardTask]:
        return client_tasks(self.run.client_round(self.round), self.run.clients(self.round))

    def _updates(self, results: Sequence[ShardResult]) -> list[ClientUpdate]:
        out = []
        for result in sorted(results, key=lambda r: client_of(r.stats.shard)):
            client = client_of(result.stats.shard)
            delta = load_tensors(client_file(self.run.run, self.round, client, ".safetensors"))
            out.append(ClientUpdate(client, delta, int(result.result["samples"])))
        return out

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        """The server step: inspect, exclude flagged clients if asked, aggregate, write global then record."""
        updates = self._updates(results)
        scores, flagged = _inspect(self, updates)
        clients = [u.client for u in updates]
        write_inspection(round_dir(self.run.run, self.round) / INSPECTION_FILE,
                         inspection_table(self.round, clients, scores, flagged))
        kept = [u for u, f in zip(updates, flagged.tolist(), strict=True) if not f]
        spec = self.run.aggregator
        aggregate = AGGREGATORS.create(spec.name, spec.params).aggregate(kept, round_=self.round)
        start = load_tensors(global_before(self.run.run, self.round))
        new = apply_delta(start, scale_delta(aggregate.delta, self.run.recipe.server_lr))
        save_tensors(round_dir(self.run.run, self.round) / GLOBAL_FILE, new)
        record = {"round": self.round, "clients": clients, "aggregator": spec.name, "params": spec.params,
                  "inspection_excluded": [c for c, f in zip(clients, flagged.tolist(), strict=True) if f],
                  "aggregate": aggregate.report(),
                  "clients_stats": [r.result for r in sorted(results, key=lambda r: client_of(r.stats.shard))],
                  "delta_norm": float(torch.cat([t.float().reshape(-1) for t in aggregate.delta.values()]).norm())}
        write_round_record(self.run.run, self.round, record)
        return record


def write_inspection(path: Path, table: Any) -> None:
    """The inspection table, through a unique temporary name then renamed."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
