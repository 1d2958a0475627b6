"""``poisonlab demo``: a short version of the badnets experiment, end to end, on generated data.

Generate -> poison (badnets, 2%) -> train a victim -> embed with it -> detect with the default detector (no
knowledge of the attack) -> clean its top 5% -> retrain -> evaluate both -> report. ``recipes/demo.yaml`` is
the same experiment as a file (a test keeps them equal); it says what was measured and why these settings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import typer

from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import RunOptions, app, fail, with_run_options

DEMO_RECIPE: dict[str, Any] = {
    "name": "demo",
    "seed": 0,
    "data": {"synth": {"samples": 4000, "image_size": 32, "samples_per_shard": 1000, "eval_per_class": 20}},
    "attacks": [{"attack": "badnets", "target": "red circle", "rate": 0.02}],
    "train": {"model": "poisonlab-tiny-32", "epochs": 5, "batch_size": 64, "lr": 0.001, "warmup_steps": 20, "decay_fraction": 1.0,
              "workers": 0},
    "detect": {"detectors": [{"name": "default"}, {"name": "clip_score"}]},
    "clean": {"budget": 0.05, "detector": "default"},
    "baseline": False,
}


def demo_recipe(samples: int, seed: int) -> dict[str, Any]:
    recipe = copy.deepcopy(DEMO_RECIPE)
    recipe["seed"] = seed
    recipe["data"]["synth"]["samples"] = samples
    recipe["data"]["synth"]["samples_per_shard"] = min(1000, max(100, samples // 4))
    return recipe


@app.command()
@with_run_options
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out"),
    samples: int = typer.Option(4000, "--samples", min=100),
    seed: int = typer.Option(0, "--seed"),
    options: RunOptions = RunOptions(),
) -> None:
    """Run a short poison -> train -> detect -> clean -> retrain -> evaluate experiment (a few minutes on a CPU)."""
    from pydantic import ValidationError

    from poisonlab.flows.experiment import ExperimentError, ExperimentSpec, run_experiment

    outputs.guard(out, "experiment")
    try:
        spec = ExperimentSpec.model_validate(demo_recipe(samples, seed))
        result = run_experiment(spec, out, options.runner, Path.cwd())
    except (ValidationError, ExperimentError) as exc:
        fail(str(exc))
    outputs.done(out, "experiment")
    options.emit(result, result["summary"])
