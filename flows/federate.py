"""``poisonlab federate train RECIPE.yaml``: the federated recipe's steps on the command's runner.

The federated adapter does the work (``poisonlab.federated.experiment``); this module only chooses where:
each round's client tasks go through ``run_job`` (in-process, or a Prefect flow on Dask). When the rounds
run on a cluster the command starts itself, one local Dask cluster serves every round of every aggregator
(a cluster per round would cost its start-up time each round); ``--dask-address`` joins an existing one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from poisonlab.federated.experiment import (
    FederatedExperiment,
    check_recipe,
    ensure_partition,
    ensure_poisoned,
    prepare_run,
    run_rounds,
    write_roles,
)
from poisonlab.federated.recipe import FederatedRecipe
from poisonlab.federated.report import summarize, write_report
from poisonlab.federated.round_eval import GlobalEvaluator
from poisonlab.flows.runtime import Executor, RunnerSpec, choose_executor, job_runner


@contextlib.contextmanager
def shared_cluster(spec: RunnerSpec, tasks_per_round: int) -> Iterator[RunnerSpec]:
    """The runner for every round: a local cluster started once when the rounds run on one, else ``spec``."""
    if choose_executor(spec, tasks_per_round) != Executor.prefect.value or spec.dask_address:
        yield spec
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=spec.worker_count(), threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        yield dataclasses.replace(spec, executor=Executor.prefect.value, dask_address=cluster.scheduler_address)


def experiment_folders(recipe: FederatedRecipe, out: Path, base_dir: Path, runner: RunnerSpec) -> FederatedExperiment:
    """The data (generated into ``OUT/data`` when the recipe asks for it) and the experiment's folders."""
    from poisonlab.flows.datasets import synth_dataset
    from poisonlab.shards.synth import SynthSpec

    out = Path(out).resolve()
    data = recipe.data
    if data.synth is not None:
        shards = out / "data"
        spec = SynthSpec(samples=data.synth.samples, seed=recipe.seed, image_size=data.synth.image_size,
                         samples_per_shard=data.synth.samples_per_shard)
        if not (shards / "eval" / "classes.json").is_file():
            synth_dataset(shards, spec, data.synth.eval_per_class, runner)
        eval_dir = shards / "eval"
    else:
        shards = Path(data.shards) if Path(data.shards).is_absolute() else base_dir / data.shards  # type: ignore[arg-type]
        eval_dir = Path(data.eval) if data.eval else shards / "eval"
        eval_dir = eval_dir if eval_dir.is_absolute() else base_dir / eval_dir
    return FederatedExperiment(recipe, out, shards.resolve(), eval_dir.resolve(), base_dir.resolve())


def run_federated(recipe: FederatedRecipe, out: Path, runner: RunnerSpec, base_dir: Path,
                  on_round: Callable[[str, dict[str, Any]], None] = lambda label, row: None) -> dict[str, Any]:
    """Every step of the recipe; a rerun resumes each aggregator at its last finished round."""
    check_recipe(recipe, Path(out).resolve())
    exp = experiment_folders(recipe, out, base_dir, runner)
    ensure_partition(exp)
    poisoned = ensure_poisoned(exp, job_runner(runner, "poison"))
    write_roles(exp)
    attack_id = recipe.malicious.attack.id or recipe.malicious.attack.attack if recipe.malicious.attack else None
    evaluator = GlobalEvaluator.open(exp.eval_dir, recipe.train.model, exp.poisoned, attack_id)
    lines = []
    with shared_cluster(runner, recipe.clients_per_round) as spec:
        for agg in recipe.aggregators:
            fr = prepare_run(exp, agg)
            rows = run_rounds(fr, job_runner(spec, f"round ({agg.label})"), evaluator,
                              lambda row, label=agg.label: on_round(label, row))
            lines.append(summarize(exp, agg.label, rows))
    report = write_report(exp, lines)
    return {"out": str(exp.out), "report": str(report), "poisoned": poisoned,
            "aggregators": [{k: v for k, v in line.items() if k != "curve"} for line in lines]}
