"""Poisoning commands: ``poison`` (build a poisoned subset) and ``poison-eval`` (trigger an eval split)."""

from __future__ import annotations

from pathlib import Path

import typer

from poisonlab.attacks import blind_job, prepare_eval_trigger, prepare_poisoning
from poisonlab.attacks.assets import AssetError
from poisonlab.attacks.blind import added_samples
from poisonlab.attacks.components import ATTACKS
from poisonlab.attacks.recipe import Recipe, RecipeError, load_recipe, recipe_from_options
from poisonlab.attacks.spec import SpecError
from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import OverwriteOpt, RunOptions, app, fail, with_run_options
from poisonlab.flows.poison import run_blind_job, run_eval_job, run_poison_job
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.pipelines.registry import RegistryError
from poisonlab.shards.markers import MarkerConflict

# Raised while validating and planning, before any shard is written: reported as a one-line error.
INPUT_ERRORS = (RegistryError, RecipeError, SpecError, AssetError, FileNotFoundError, ValueError)


def _recipe(recipe: Path | None, attack: str | None, target: str | None, rate: float | None, count: int | None,
            seed: int | None, params: list[str]) -> tuple[Recipe, Path]:
    if recipe is not None:
        if attack or target or rate is not None or count is not None or params:
            raise RecipeError("--recipe describes the attacks; do not combine it with --attack/--target/--rate/--count/--param")
        loaded = load_recipe(recipe)
        return (loaded.model_copy(update={"seed": seed}) if seed is not None else loaded), recipe.parent
    if attack is None:
        raise RecipeError("give --attack NAME (see `poisonlab components attack`) or --recipe FILE")
    return recipe_from_options(attack, target, rate, count, seed or 0, params), Path.cwd()


def _summary(result: dict) -> str:
    lines = [f"poisoned {result['poisoned']} samples ({result['failed']} failed) in {result['shards']} shards "
             f"-> {result['out']} (run {result['run_id']}, manifest {result['manifest']})"]
    for attack_id, a in result["attacks"].items():
        lines.append(f"  {attack_id}: {a['done']}/{a['planned']} {a['attack']} -> target {a['target']!r}")
    lines += [f"  failed: {reason}: {n}" for reason, n in result["failed_reasons"].items()]
    if "eval" in result:
        lines.append(f"  eval split: {result['eval']['triggered']} triggered samples -> {result['eval']['out']}")
    if "blind" in result:
        lines.append("  " + _blind_summary(result["blind"]))
    return "\n".join(lines)


def _blind_summary(result: dict) -> str:
    note = (f"\nwarning: {result['added']} added samples (targeted) carry no source metadata and stay "
            "distinguishable" if result["added"] else "")
    return (f"blind copy of {result['samples']} samples ({result['written']} written) in {result['shards']} shards "
            f"-> {result['out']}; the manifest stays in {result['poisoned']}" + note)


def _export_blind(src: Path, dst: Path, runner: RunnerSpec, overwrite: bool) -> dict:
    """Run the blind copy of ``src`` into ``dst`` (refusing another configuration's shards before any work)."""
    try:
        job = blind_job(src, dst, overwrite=overwrite)
        job.tasks()
    except (FileNotFoundError, ValueError, MarkerConflict) as exc:
        fail(str(exc))
    result = run_blind_job(job, runner)
    outputs.done(dst, "shards")
    return {**result, "out": str(dst), "poisoned": str(src), "added": added_samples(src)}


@app.command()
@with_run_options
def poison(
    src: Path = typer.Option(..., "--in", help="input shard folder"),
    dst: Path = typer.Option(..., "--out", help="output folder (fresh, or the same run to resume)"),
    attack: str | None = typer.Option(None, "--attack", metavar="<name>",
                                      help=f"attack: {', '.join(ATTACKS.loaded_names())} (with plugins: "
                                      "`poisonlab components attack`)"),
    rate: float | None = typer.Option(None, "--rate", help="fraction of the dataset: round(rate x total)"),
    count: int | None = typer.Option(None, "--count", help="exact number of samples to poison (or add)"),
    target: str | None = typer.Option(None, "--target", help='target class, e.g. "red circle"'),
    seed: int | None = typer.Option(None, "--seed", help="seed of every keyed choice (default 0 or the recipe's)"),
    param: list[str] = typer.Option([], "--param", help="attack parameter NAME=VALUE (YAML value); repeatable"),
    recipe: Path | None = typer.Option(None, "--recipe", help="YAML recipe of one or several attacks"),
    eval_out: Path | None = typer.Option(None, "--eval-out", help="also trigger the eval split into this folder"),
    eval_in: Path | None = typer.Option(None, "--eval-in", help="eval split to trigger (default: IN/eval)"),
    blind_out: Path | None = typer.Option(None, "--blind-out", help="also write a blind copy here (export --blind)"),
    overwrite: bool = OverwriteOpt,
    options: RunOptions = RunOptions(),
) -> None:
    """Build a poisoned copy of a dataset with an exact manifest (_run/manifest.parquet, attack.json)."""
    runner = options.runner
    outputs.guard(dst, "poisoned", src, eval_in, eval_out)
    outputs.guard(eval_out, "triggered_eval", src, eval_in, dst)
    outputs.guard(blind_out, "shards", src, eval_in, dst, eval_out)
    try:
        loaded, base_dir = _recipe(recipe, attack, target, rate, count, seed, param)
        job = prepare_poisoning(src, dst, loaded, base_dir, overwrite=overwrite)
        eval_dir = eval_in if eval_in is not None else src / "eval"
        if eval_out is not None and not eval_dir.is_dir():
            raise FileNotFoundError(f"no eval split at {eval_dir}; give --eval-in")
    except INPUT_ERRORS as exc:
        fail(str(exc))
    outputs.done(dst, "poisoned")  # recorded once attack.json is there, so a killed run resumes
    result = run_poison_job(job, runner)
    if eval_out is not None:
        try:
            eval_job = prepare_eval_trigger(eval_dir, dst, eval_out)
        except INPUT_ERRORS as exc:
            fail(f"poisoned {dst}, but the eval split cannot be triggered: {exc}")
        outputs.done(eval_out, "triggered_eval")
        result["eval"] = run_eval_job(eval_job, runner)
    if blind_out is not None:
        result["blind"] = _export_blind(dst, blind_out, runner, overwrite)
    options.emit(result, _summary(result))


@app.command("poison-eval")
@with_run_options
def poison_eval(
    src: Path = typer.Option(..., "--in", help="evaluation split (shard folder with classes.json)"),
    spec: Path = typer.Option(..., "--spec", help="poisoned run folder, its attack.json, or a recipe YAML"),
    dst: Path = typer.Option(..., "--out", help="output folder for the triggered split"),
    attack: str | None = typer.Option(None, "--attack", help="attack id when the run has several"),
    seed: int | None = typer.Option(None, "--seed", help="seed (recipes only; a run folder has its own)"),
    options: RunOptions = RunOptions(),
) -> None:
    """Apply a run's exact trigger to an evaluation split's non-target images (for attack success rate)."""
    runner = options.runner
    outputs.guard(dst, "triggered_eval", src, spec)
    try:
        job = prepare_eval_trigger(src, spec, dst, attack, seed)
    except INPUT_ERRORS as exc:
        fail(str(exc))
    outputs.done(dst, "triggered_eval")
    result = run_eval_job(job, runner)
    options.emit(result, f"triggered {result['triggered']} non-target images with attack {result['attack_id']!r} "
                          f"-> {result['out']} ({result['by_status']})")


@app.command()
@with_run_options
def export(
    src: Path = typer.Option(..., "--in", help="poisoned shard folder (its _run/manifest.parquet stays there)"),
    dst: Path = typer.Option(..., "--out", help="folder for the copy (shards only)"),
    blind: bool = typer.Option(False, "--blind", help="strip what tells poisoned samples apart (required)"),
    overwrite: bool = OverwriteOpt,
    options: RunOptions = RunOptions(),
) -> None:
    """Copy a poisoned folder for a filter under test: same samples, no provenance, every sample alike."""
    if not blind:
        fail("export writes blind copies only: give --blind (a plain copy is the poisoned folder itself)")
    outputs.guard(dst, "shards", src)
    result = _export_blind(src, dst, options.runner, overwrite)
    options.emit(result, _blind_summary(result))
