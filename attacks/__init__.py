"""Attacks: image triggers and caption attacks with exact ground-truth manifests.

Public API (no Prefect or Dask here; the ``poisonlab poison`` flow runs the same job on Dask):

* ``prepare_poisoning(src, dst, recipe) -> PoisonJob``: validate and plan, save ``attack.json``;
  ``job.tasks()`` for any runner, ``job.finalize(results)`` writes ``manifest.parquet``.
* ``poison_local(src, dst, recipe)``: the whole run in this process.
* ``load_attack(path, attack=None) -> AttackSpec``: rebuild a run's trigger (``.apply_image(array, key)``,
  ``.target``, ``.is_image_trigger``, ``.apply_text``) from a run folder, ``attack.json`` or recipe YAML;
  ``.capabilities`` says what the attack declares (``attacks.base``: image or text trigger, added samples,
  target images), which evaluation reads instead of the attack's name.
* ``apply_trigger_to_eval(eval_dir, spec, out_dir)``: trigger an evaluation split's non-target images.
* ``load_recipe``, ``recipe_from_options``, ``read_manifest``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poisonlab.attacks import components as _components  # noqa: F401  (registers the attacks)
from poisonlab.attacks.captions import TargetError
from poisonlab.attacks.evaluation import apply_trigger_to_eval, prepare_eval_trigger
from poisonlab.attacks.job import PoisonJob, prepare_poisoning
from poisonlab.attacks.manifest import MANIFEST_FILE, manifest_path, read_manifest
from poisonlab.attacks.recipe import Recipe, RecipeError, load_recipe, recipe_from_options
from poisonlab.attacks.spec import SPEC_FILE, AttackSpec, SpecError, load_attack
from poisonlab.pipelines.job import run_job_local


def poison_local(src: str | Path, dst: str | Path, recipe: Recipe, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Poison ``src`` into ``dst`` in this process (tests, notebooks); returns the run summary."""
    job = prepare_poisoning(Path(src), Path(dst), recipe, Path(base_dir) if base_dir else None)
    return run_job_local(job)


__all__ = [
    "MANIFEST_FILE",
    "SPEC_FILE",
    "AttackSpec",
    "PoisonJob",
    "Recipe",
    "RecipeError",
    "SpecError",
    "TargetError",
    "apply_trigger_to_eval",
    "load_attack",
    "load_recipe",
    "manifest_path",
    "poison_local",
    "prepare_eval_trigger",
    "prepare_poisoning",
    "read_manifest",
    "recipe_from_options",
]
