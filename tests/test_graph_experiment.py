"""The experiment runner on graphs: the same recipe format and steps as for images, the modality read from
the data (tiny: 140 generated graphs, one epoch of a small graph_clip)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from poisonlab.filters.store import read_info
from poisonlab.flows.experiment import ExperimentError, load_experiment, run_experiment
from poisonlab.flows.runtime import RunnerSpec

SMALL = {"gin_hidden": 16, "embed_dim": 16, "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 16}
TINY_GRAPHS = {
    "name": "tiny-graphs",
    "seed": 1,
    "data": {"synth": {"modality": "graph", "samples": 140, "samples_per_shard": 70, "eval_per_class": 2}},
    "attacks": [{"attack": "subgraph_trigger", "target": "house", "count": 7, "params": {"size": 5}}],
    "train": {"objective": "graph_clip", "objective_params": SMALL, "epochs": 1, "batch_size": 28, "workers": 0},
    "detect": {"detectors": [{"name": "default"}, {"name": "kdist", "id": "kdist_k4", "params": {"k": 4}},
                             {"name": "clip_score"}]},
    "clean": {"budget": 0.1, "detector": "default"},
    "baseline": True,
}


def _recipe(directory: Path, body: dict) -> Path:
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_a_graph_recipe_runs_every_step_with_the_graph_embedder_and_default(tmp_path: Path) -> None:
    spec, base = load_experiment(_recipe(tmp_path, TINY_GRAPHS))
    out = tmp_path / "out"
    result = run_experiment(spec, out, RunnerSpec(executor="local", progress=False), base)
    steps = result["steps"]
    assert steps["data"]["samples"] == 140 and steps["data"]["classes"] == 7
    assert steps["poison"]["poisoned"] == 7
    # the victim's own embedder (the run records graph_clip), so detectors read its graph space
    assert read_info(Path(steps["embed"]["store"])).spaces == {"graph": 16, "text": 16}
    assert set(steps["detect"]["detectors"]) == {"default", "kdist_k4", "clip_score"}
    assert steps["clean"]["removed"] == 14 and steps["clean"]["detector"] == "default"
    assert {row["model"] for row in result["table"]} == {"victim", "baseline", "cleaned"}
    for label in ("victim", "baseline", "cleaned"):
        assert steps["evaluate"][label]["subgraph_trigger"]["attack_success"] is not None
    for png in ("roc.png", "attack_success.png", "loss_curves.png"):
        assert (out / "report" / png).stat().st_size > 1000


def test_an_unknown_built_in_modality_is_refused_before_any_step(tmp_path: Path) -> None:
    body = {**TINY_GRAPHS, "data": {"synth": {"modality": "audio", "samples": 140}}}
    with pytest.raises(ExperimentError, match="no built-in 'audio' dataset"):
        load_experiment(_recipe(tmp_path, body))
