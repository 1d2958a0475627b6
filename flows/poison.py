"""Flows that build a poisoned subset and trigger an evaluation split, one Prefect task per shard on Dask.

The attacks layer validates and plans everything in the driver (``prepare_*``); these flows only run
the planned jobs with the chosen runner (``run_job``), so the bytes written never depend on the runner,
the number of workers or the order in which shards finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poisonlab.attacks import prepare_eval_trigger, prepare_poisoning
from poisonlab.attacks.evaluation import EvalTriggerJob
from poisonlab.attacks.job import PoisonJob
from poisonlab.attacks.recipe import Recipe
from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.shards.plan import FolderJob


def run_poison_job(job: PoisonJob, runner: RunnerSpec) -> dict[str, Any]:
    return run_job(job, runner, "poison")


def poison_dataset(src: Path, dst: Path, recipe: Recipe, runner: RunnerSpec, base_dir: Path | None = None) -> dict[str, Any]:
    """Validate and plan (errors before any work), then poison every shard of ``src`` into ``dst``."""
    return run_poison_job(prepare_poisoning(Path(src), Path(dst), recipe, base_dir), runner)


def run_eval_job(job: EvalTriggerJob, runner: RunnerSpec) -> dict[str, Any]:
    return run_job(job, runner, "poison-eval")


def trigger_eval_split(
    eval_dir: Path, spec: Path, out_dir: Path, runner: RunnerSpec, attack: str | None = None, seed: int | None = None
) -> dict[str, Any]:
    """Apply a run's trigger to an evaluation split's non-target images (for attack success rate)."""
    return run_eval_job(prepare_eval_trigger(Path(eval_dir), spec, Path(out_dir), attack, seed), runner)


def run_blind_job(job: FolderJob, runner: RunnerSpec) -> dict[str, Any]:
    """The blind copy of a poisoned folder (``attacks.blind``), one task per shard."""
    return run_job(job, runner, "export")
