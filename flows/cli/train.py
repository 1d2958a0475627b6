"""Training commands: ``train`` (contrastive pretraining), ``evaluate`` (a run on a split), ``experiment``."""

from __future__ import annotations

from pathlib import Path

import typer

from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import JsonOpt, RunOptions, app, choice, emit, fail, with_run_options
from poisonlab.flows.cli.paths import absolute

# TrainSettings.precision's values. poisonlab.training loads torch (seconds), so the command line cannot
# read them (or TrainSettings' defaults) at start-up; tests/test_cli_flags.py checks that both agree.
PRECISIONS = ("auto", "fp32", "amp")
Precision = choice(PRECISIONS)

# open_clip_train's spellings are accepted as aliases where an option means what open_clip_train's does
# (--wd, --warmup, --workers: DataLoader workers), so a command line can move from one tool to the other.


@app.command()
def train(
    shards: Path = typer.Option(..., "--in", help="shard folder (NNNNN.tar + sidecars)"),
    model: str = typer.Option("poisonlab-tiny-32", "--model", "--arch", help="open_clip architecture name or JSON config"),
    objective: str = typer.Option("clip", "--objective", help="registered training objective (clip, graph_clip; "
                                  "`poisonlab components objective`)"),
    objective_param: list[str] = typer.Option([], "--objective-param", help="KEY=VALUE parameter of the objective "
                                              "(repeatable; e.g. gin_layers=3)"),
    epochs: int = typer.Option(5, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    lr: float = typer.Option(1e-3, "--lr", min=0.0),
    out: Path = typer.Option(..., "--out", help="run folder (checkpoint, metrics, loss plot)"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    weight_decay: float = typer.Option(0.1, "--weight-decay", "--wd", min=0.0),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", "--warmup", min=0, help="default: 5% of all steps"),
    decay_fraction: float | None = typer.Option(None, "--decay-fraction", min=0.0, max=1.0,
                                                help="share of the steps after warm-up over which the rate decays "
                                                "to zero (the rest hold lr)  [default: TrainSettings']"),
    data_workers: int = typer.Option(1, "--data-workers", "--workers", min=0,
                                     help="DataLoader worker processes (0: in this process)"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    precision: Precision = typer.Option("auto", "--precision", help="auto: mixed (amp) on CUDA, else fp32"),
    as_json: bool = JsonOpt,
) -> None:
    """Pretrain a CLIP model on shards with open_clip (read through poisonlab's shard reader)."""
    from pydantic import ValidationError

    from poisonlab.models.zoo import CheckpointError
    from poisonlab.pipelines.registry import RegistryError
    from poisonlab.training import TrainSettings, train_run
    from poisonlab.training.checkpoint import ResumeError
    from poisonlab.training.data import DataError

    try:
        settings = TrainSettings(objective=objective, objective_params=_key_values(objective_param), model=model,
                                 epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, weight_decay=weight_decay, warmup_steps=warmup_steps, workers=data_workers,
                                 device=device, precision=precision,  # type: ignore[arg-type]
                                 **({} if decay_fraction is None else {"decay_fraction": decay_fraction}))
        outputs.guard(out, "run", shards)
        result = train_run(shards, out, settings, resume=resume, progress=not as_json)
    except (ValidationError, DataError, ResumeError, CheckpointError, RegistryError, ValueError) as exc:
        fail(str(exc))
    outputs.done(out, "run")
    skipped = sum(result.skipped.values())
    emit(result.to_dict(), as_json,
         f"trained {result.epochs} epochs ({result.steps} steps, {result.samples} pairs) in {result.seconds:.0f}s: "
         f"{result.pairs_per_s:,.0f} pairs/s on {result.device}, final loss {result.final_loss:.4f}; "
         f"skipped {skipped} samples {result.skipped if skipped else ''}; run in {out}")


def _key_values(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict (values are validated by the objective's parameter model)."""
    pairs = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--objective-param expects KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


@app.command()
def evaluate(
    run: Path | None = typer.Option(None, "--run", help="a run folder (`poisonlab train`) or an open_clip local-dir "
                                    "folder (open_clip_config.json + weights)"),
    arch: str | None = typer.Option(None, "--arch", "--model", help="instead of --run: open_clip architecture, "
                                    "shipped config, JSON file or local-dir:DIR"),
    weights: str | None = typer.Option(None, "--weights", "--pretrained", help="with --arch: open_clip_train's epoch_N.pt, a "
                                       ".safetensors or weights-only .pt file, or a pretrained tag"),
    eval_split: Path = typer.Option(..., "--eval", help="labelled split with classes.json (e.g. DATA/eval)"),
    attack_from: Path | None = typer.Option(None, "--attack-from", help="poisoned folder, its attack.json, or a recipe"),
    attack: str | None = typer.Option(None, "--attack", help="attack id when the run has several"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N"),
    save: Path | None = typer.Option(None, "--save", help="also write the result as JSON here"),
    force: bool = typer.Option(False, "--force", help="measure an attack of another dataset than the run's "
                               "(by default refused: the run records the fingerprints of its training data)"),
    as_json: bool = JsonOpt,
) -> None:
    """Zero-shot accuracy, attack success (exact trigger), linear probe and retrieval recall of a run
    (or of a model trained elsewhere: --arch with --weights).

    --attack-from must be an attack of the run's dataset: the run trained on the poisoned folder, on its
    source, or on a folder cleaned from it; another dataset's attack is refused unless --force."""
    import json

    from poisonlab.training.eval_data import EvalError
    from poisonlab.training.evaluation import evaluate_run, format_evaluation

    try:
        result = evaluate_run(_evaluated(run, arch, weights), eval_split, attack_from, attack, device, force=force)
    except EvalError as exc:
        fail(str(exc))
    for line in result.get("warnings") or []:
        typer.echo(f"warning: {line}", err=True)
    if save is not None:
        from poisonlab.shards.layout import atomic_write_text

        save.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(save, json.dumps(result, indent=2, sort_keys=True))
    emit(result, as_json, format_evaluation(result))


def _evaluated(run: Path | None, arch: str | None, weights: str | None):  # type: ignore[no-untyped-def]
    """--run RUN, or --arch ARCH [--weights W]: one of the two, never both."""
    if (run is None) == (arch is None):
        fail("give --run RUN_DIR, or --arch ARCH with --weights (e.g. open_clip_train's epoch_N.pt)")
    if run is not None:
        if weights is not None:
            fail("--run names the weights; --weights goes with --arch")
        return run
    from poisonlab.models.zoo import ModelSpec

    return ModelSpec(arch=arch, weights=weights)  # type: ignore[arg-type]


@app.command()
@with_run_options
def experiment(
    recipe: Path = typer.Argument(..., help="experiment recipe YAML (see recipes/)"),
    out: Path | None = typer.Option(None, "--out", help="experiment folder (default: experiments/<recipe name>)"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set train.epochs=2"),
    options: RunOptions = RunOptions(),
) -> None:
    """Generate/poison -> train victim -> embed -> detect -> clean -> retrain -> evaluate -> report (resumable).

    A recipe with a `grid:` section (recipes/grid.yaml) trains one victim per attack and rate and writes one
    detection table (OUT/grid.md)."""
    import yaml

    from poisonlab.flows.experiment import ExperimentError, load_experiment

    try:
        parsed = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ExperimentError(f"--set {item!r}: expected KEY=VALUE (e.g. train.epochs=2)")
            parsed[key.strip()] = yaml.safe_load(value)
        spec, base_dir = load_experiment(recipe, parsed)
        folder = out or absolute(Path("experiments") / spec.name)
        outputs.guard(folder, "experiment")
        result = spec.run(folder, options.runner, base_dir)
    except ExperimentError as exc:
        fail(str(exc))
    outputs.done(folder, "experiment")
    options.emit(result, result["summary"])
