"""A federated recipe end to end, given a job runner: partition, poison the malicious partitions, run every
aggregator's rounds, evaluate the global model per round, compare.

    OUT/partition/                 partition.parquet + partition.json (of the clean shards)
    OUT/poisoned/                  the malicious clients' poisoned copy (+ manifest with a client column)
    OUT/clients.json               which clients are malicious and how (the malicious-client manifest)
    OUT/runs/<aggregator id>/      initial/probe weights, rounds/NNNN/..., rounds.parquet, rounds.json
    OUT/report/                    comparison.json, report.md, rounds.png

Where the tasks run is the caller's (``flows.federate`` passes ``run_job`` with the command's runner); every
step skips what a previous run finished, so a rerun resumes at the last finished round of each aggregator.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from poisonlab.attacks.recipe import Recipe
from poisonlab.federated.lineage import read_lineage
from poisonlab.federated.partition import RECORD_FILE, make_partition
from poisonlab.federated.poisoning import prepare_client_poisoning
from poisonlab.federated.probe import probe_images
from poisonlab.federated.recipe import AggregatorSpec, FederatedRecipe, FederatedRecipeError
from poisonlab.federated.round_eval import GlobalEvaluator
from poisonlab.federated.rounds import FederatedRun, RoundJob
from poisonlab.federated.store import (
    GLOBAL_FILE,
    INITIAL_FILE,
    INSPECTION_FILE,
    PROBE_FILE,
    finished_rounds,
    load_tensors,
    round_dir,
    save_tensors,
)
from poisonlab.models.zoo import CheckpointError, ModelSpec, load_model
from poisonlab.pipelines.job import JobRunner
from poisonlab.shards.layout import atomic_path, atomic_write_json
from poisonlab.training.config import RUNTIME_ONLY
from poisonlab.training.loop import init_state

EVAL_FILE = "eval.json"
ROLES_FILE = "clients.json"
RECIPE_FILE = "federated.json"
# What a rerun may change: more rounds, other or more aggregators, evaluation frequency; and how fast it runs.
MAY_CHANGE = frozenset({"name", "rounds", "aggregators", "evaluate_every"})


@dataclasses.dataclass(frozen=True)
class FederatedExperiment:
    """The folders of one recipe's run; paths absolute (workers see the same ones)."""

    recipe: FederatedRecipe
    out: Path
    shards: Path
    eval_dir: Path
    base_dir: Path

    @property
    def partition(self) -> Path:
        return self.out / "partition"

    @property
    def poisoned(self) -> Path | None:
        return self.out / "poisoned" if self.recipe.malicious.attack is not None else None

    @property
    def train_shards(self) -> Path:
        return self.poisoned or self.shards

    def run_dir(self, label: str) -> Path:
        return self.out / "runs" / label


def check_recipe(recipe: FederatedRecipe, out: Path) -> None:
    """Record the recipe in ``OUT/federated.json``; refuse a rerun whose data, clients or training differ
    (its rounds would continue weights made another way). Rounds and aggregators may be added."""
    path = Path(out) / RECIPE_FILE
    current = recipe.model_dump(mode="json")
    current["train"] = {k: v for k, v in current["train"].items() if k not in RUNTIME_ONLY}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(saved) | set(current) if k not in MAY_CHANGE and saved.get(k) != current.get(k))
        if changed:
            raise FederatedRecipeError(f"{out} was run with another recipe ({', '.join(changed)} differ); "
                                       "use another --out")
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, current)


def ensure_partition(exp: FederatedExperiment) -> None:
    if not (exp.partition / RECORD_FILE).is_file():
        p = exp.recipe.partition
        make_partition(exp.shards, exp.partition, p.clients, p.scheme, p.params, p.seed)


def ensure_poisoned(exp: FederatedExperiment, run_job: JobRunner) -> dict[str, Any] | None:
    """The malicious clients' poisoned copy (skipped when its lineage says it is finished)."""
    m = exp.recipe.malicious
    if exp.poisoned is None or m.attack is None:
        return None
    if (read_lineage(exp.poisoned) or {}).get("fingerprint"):
        return {"out": str(exp.poisoned), "resumed": True}
    recipe = Recipe(seed=exp.recipe.seed, attacks=(m.attack,))
    job = prepare_client_poisoning(exp.shards, exp.poisoned, exp.partition, m.clients, recipe, exp.base_dir)
    return run_job(job)


def start_weights(recipe: FederatedRecipe, base_dir: Path) -> dict[str, torch.Tensor]:
    """The weights round 0 starts from: a checkpoint (continued pretraining) or the seeded fresh model."""
    fresh = init_state(recipe.train).weights
    if recipe.start is None:
        return fresh
    folder = Path(recipe.start) if Path(recipe.start).is_absolute() else base_dir / recipe.start
    try:
        weights = load_model(ModelSpec.from_run(folder), "cpu").model.state_dict()
    except CheckpointError as exc:
        raise FederatedRecipeError(f"start: {exc}") from None
    if {k: v.shape for k, v in weights.items()} != {k: v.shape for k, v in fresh.items()}:
        raise FederatedRecipeError(f"start: {folder} is not a {recipe.train.model} model (other parameters)")
    return {k: v.detach().clone() for k, v in weights.items()}


def prepare_run(exp: FederatedExperiment, spec: AggregatorSpec) -> FederatedRun:
    """The run folder with its initial weights and probe images (written once; a rerun keeps them)."""
    run = exp.run_dir(spec.label)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / INITIAL_FILE).is_file():
        save_tensors(run / INITIAL_FILE, start_weights(exp.recipe, exp.base_dir))
    if not (run / PROBE_FILE).is_file():
        save_tensors(run / PROBE_FILE, {"images": probe_images(exp.eval_dir, exp.recipe.probe.images, exp.recipe.seed)})
    return FederatedRun(exp.recipe, spec, run, exp.train_shards, exp.partition)


def write_roles(exp: FederatedExperiment) -> None:
    """The malicious-client manifest: who is malicious and how (read only to measure detection)."""
    m = exp.recipe.malicious
    atomic_write_json(exp.out / ROLES_FILE, {
        "clients": exp.recipe.partition.clients, "malicious": list(m.clients),
        "attack": m.attack.model_dump() if m.attack else None, "boost": m.boost, "norm_bound": m.norm_bound})


def _evaluate_round(run: Path, round_: int, evaluator: GlobalEvaluator) -> dict[str, Any]:
    path = round_dir(run, round_) / EVAL_FILE if round_ >= 0 else run / EVAL_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    weights = load_tensors(round_dir(run, round_) / GLOBAL_FILE if round_ >= 0 else run / INITIAL_FILE)
    result = {"round": round_, **evaluator(weights)}
    atomic_write_json(path, result)
    return result


def run_rounds(fr: FederatedRun, run_job: JobRunner, evaluator: GlobalEvaluator | None,
               on_round: Callable[[dict[str, Any]], None] = lambda row: None) -> list[dict[str, Any]]:
    """Every round not yet finished, then the per-round table; returns its rows (round -1: the start)."""
    every = fr.recipe.evaluate_every
    for round_ in range(finished_rounds(fr.run), fr.recipe.rounds):
        record = run_job(RoundJob(fr, round_))
        row = {"round": round_, "excluded": record["inspection_excluded"]}
        if evaluator is not None and ((round_ + 1) % every == 0 or round_ == fr.recipe.rounds - 1):
            row.update(_evaluate_round(fr.run, round_, evaluator))
        on_round(row)
    return round_table(fr, evaluator)


def round_table(fr: FederatedRun, evaluator: GlobalEvaluator | None) -> list[dict[str, Any]]:
    """``rounds.parquet``/``rounds.json``: the start and every evaluated round, with exclusions."""
    rows = []
    every = fr.recipe.evaluate_every
    for round_ in range(-1, fr.recipe.rounds):
        if evaluator is None or not (round_ < 0 or (round_ + 1) % every == 0 or round_ == fr.recipe.rounds - 1):
            continue
        rows.append(_evaluate_round(fr.run, round_, evaluator))
    with atomic_path(fr.run / "rounds.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
    atomic_write_json(fr.run / "rounds.json", rows)
    return rows


def inspection_rows(run: Path, rounds: int) -> pa.Table:
    """Every round's inspection table of a run, concatenated."""
    tables = [pq.read_table(round_dir(run, r) / INSPECTION_FILE) for r in range(rounds)
              if (round_dir(run, r) / INSPECTION_FILE).is_file()]
    return pa.concat_tables(tables) if tables else pa.table({"round": [], "client": []})
