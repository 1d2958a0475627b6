"""The experiment recipe runner: every step on tiny data, resume from markers, Prefect flow, bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from poisonlab.flows.experiment import ExperimentError, load_experiment, run_experiment
from poisonlab.flows.runtime import RunnerSpec

TINY = {
    "name": "tiny",
    "seed": 3,
    "data": {"synth": {"samples": 480, "samples_per_shard": 120, "eval_per_class": 2}},
    "attacks": [{"attack": "badnets", "target": "red circle", "count": 12}],
    "train": {"epochs": 1, "batch_size": 48, "lr": 5e-4, "shuffle_buffer": 100},
    "detect": {"detectors": [{"name": "kdist", "id": "kdist_k8", "params": {"k": 8}}, {"name": "clip_score"},
                             {"name": "default"}]},
    "clean": {"budget": 0.05},
    "baseline": True,
}
LOCAL = RunnerSpec(executor="local", progress=False)


def write_recipe(directory: Path, body: dict, name: str = "recipe.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("experiment")
    spec, base = load_experiment(write_recipe(root, TINY))
    return root / "out", run_experiment(spec, root / "out", LOCAL, base)


def test_every_step_leaves_outputs_and_a_report(finished: tuple[Path, dict]) -> None:
    out, result = finished
    assert list(result["steps"]) == ["data", "poison", "train_victim", "train_baseline", "embed", "detect", "clean",
                                     "train_cleaned", "evaluate", "report"]
    for step in result["steps"]:
        assert (out / "steps" / f"{step}.json").exists()
    assert result["steps"]["poison"]["poisoned"] == 12
    clean = result["steps"]["clean"]
    assert clean["removed"] == 24  # 5% of 480
    assert clean["detector"] == "kdist_k8" and not clean["oracle"]  # the recipe's first detector: no manifest used
    assert 0 <= clean["poisoned_removed"] <= 12
    detection = result["steps"]["detect"]["detectors"]
    assert set(detection) == {"kdist_k8", "clip_score", "default"} and all(0 <= d["auroc"] <= 1 for d in detection.values())
    models = {row["model"] for row in result["table"]}
    assert models == {"victim", "baseline", "cleaned"}
    md = (out / "report" / "report.md").read_text()
    assert "| victim |" in md and "AUROC" in md and "NOT the target" in md and "named in the recipe" in md
    for png in ("roc.png", "attack_success.png", "loss_curves.png"):
        assert (out / "report" / png).stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report" / "report.html").read_text()
    assert (out / "runs" / "cleaned" / "model.safetensors").exists()
    summary = json.loads((out / "runs" / "cleaned" / "train_summary.json").read_text())
    assert summary["samples"] < 480  # trained on the cleaned shards
    evaluations = sorted(p.name.split(".")[0] for p in (out / "eval").glob("*.json"))
    assert evaluations == ["baseline", "cleaned", "victim"]
    for path in (out / "eval").glob("*.json"):  # each model learned from the attack's own dataset: no warning
        assert json.loads(path.read_text())["warnings"] == []


def test_rerun_resumes_from_the_markers(finished: tuple[Path, dict], tmp_path: Path) -> None:
    out, first = finished
    spec, base = load_experiment(write_recipe(tmp_path, TINY))
    again = run_experiment(spec, out, LOCAL, base)
    assert all(step.get("resumed") for step in again["steps"].values())
    assert again["table"] == first["table"]
    # a half-finished step is redone from its own checkpoints: drop the report marker and one output
    (out / "steps" / "report.json").unlink()
    (out / "report" / "report.md").unlink()
    third = run_experiment(spec, out, LOCAL, base)
    assert not third["steps"]["report"].get("resumed") and (out / "report" / "report.md").exists()


def test_folder_of_another_experiment_is_refused(finished: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = finished
    other = {**TINY, "train": {**TINY["train"], "lr": 1e-3}}
    spec, base = load_experiment(write_recipe(tmp_path, other))
    with pytest.raises(ExperimentError, match="another experiment"):
        run_experiment(spec, out, LOCAL, base)


@pytest.mark.parametrize("change, message", [
    ({"attacks": [{"attack": "no_such_attack", "target": "red circle", "count": 1}]}, "no_such_attack"),
    ({"detect": {"detectors": [{"name": "no_such_detector"}]}}, "no_such_detector"),
    ({"clean": {"budget": 0.05, "detector": "lof"}}, "not one of the detectors"),
    ({"data": {"shards": "somewhere"}}, "needs 'eval'"),
    ({"train": {"epochs": 0}}, "epochs"),
    ({"trian": {}}, "trian"),
    ({"baseline": False, "attacks": [{"attack": "optimised_patch", "target": "red circle", "count": 4,
                                      "params": {"surrogate": "@baseline"}}]}, "'baseline' must be true"),
])
def test_bad_recipes_fail_before_any_step(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        load_experiment(write_recipe(tmp_path, {**TINY, **change}))


def test_shipped_recipes_are_valid() -> None:
    recipes = [p for p in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
               if not p.stem.startswith("federated_")]  # federated recipes: tests/test_federated_recipes.py
    assert {"badnets", "blended", "wanet", "targeted", "demo"} <= {p.stem for p in recipes}
    for path in recipes:
        spec, _ = load_experiment(path)
        assert spec.attack_recipe().attacks and spec.train.epochs >= 1  # a grid spec has no attacks list of its own


def test_an_attack_can_use_the_experiments_own_clean_baseline_as_its_surrogate(tmp_path: Path) -> None:
    """``surrogate: "@baseline"``: the clean baseline trains first, on the unpoisoned shards, and the patch is
    optimised on it (BadCLIP's surrogate without a second experiment)."""
    body = {**TINY, "name": "tiny-own-surrogate", "detect": None, "clean": None,
            "attacks": [{"id": "patch", "attack": "optimised_patch", "target": "red circle", "count": 12,
                         "params": {"surrogate": "@baseline", "steps": 5, "images": 16}}]}
    spec, base = load_experiment(write_recipe(tmp_path, body))
    out = tmp_path / "out"
    result = run_experiment(spec, out, LOCAL, base)
    assert list(result["steps"]) == ["data", "train_baseline", "poison", "train_victim", "evaluate", "report"]
    assert result["steps"]["poison"]["poisoned"] == 12
    attack = json.loads((out / "poisoned" / "attack.json").read_text())
    assert str((out / "runs" / "baseline").resolve()) in json.dumps(attack)
    assert json.loads((out / "experiment.json").read_text())["recipe"]["attacks"][0]["params"]["surrogate"] == "@baseline"


def test_experiment_runs_as_a_prefect_flow(tmp_path: Path, prefect_harness) -> None:  # type: ignore[no-untyped-def]
    body = {**TINY, "name": "tiny-prefect", "detect": None, "clean": None, "baseline": False}
    spec, base = load_experiment(write_recipe(tmp_path, body))
    result = run_experiment(spec, tmp_path / "out", RunnerSpec(executor="prefect", workers=1, progress=False), base)
    assert list(result["steps"]) == ["data", "poison", "train_victim", "evaluate", "report"]
    assert (tmp_path / "out" / "report" / "report.html").exists()
    assert result["table"][0]["model"] == "victim"


def test_demo_recipe_file_is_the_demo_command(tmp_path: Path) -> None:
    from poisonlab.flows.cli.demo import DEMO_RECIPE

    shipped = yaml.safe_load((Path(__file__).parents[1] / "recipes" / "demo.yaml").read_text())
    assert shipped == DEMO_RECIPE


def test_demo_command_runs_a_short_experiment(tmp_path: Path) -> None:
    import importlib

    from typer.testing import CliRunner

    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--samples", "240", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert {row["model"] for row in result["table"]} == {"victim", "cleaned"}
    assert (out / "report" / "report.html").exists() and (out / "cleaned" / "_run" / "exclusions.parquet").exists()


SHIPPED = [p for p in sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
           if not p.stem.startswith("federated_")]  # federated recipes: tests/test_federated_recipes.py


def test_shipped_experiment_recipes_validate() -> None:
    assert {p.stem for p in SHIPPED} >= {"badnets", "blended", "wanet", "targeted", "demo"}
    for path in SHIPPED:
        spec, _ = load_experiment(path)
        assert spec.attack_recipe().attacks, path


def test_set_reaches_into_lists_and_a_bad_path_is_one_line(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, TINY)
    spec, _ = load_experiment(path, {"attacks.0.count": 20, "detect.detectors.1.name": "kdist"})
    assert spec.attacks[0]["count"] == 20 and spec.detect is not None and spec.detect.detectors[1].name == "kdist"
    for bad in ("attacks.7.count", "attacks.x.count", "seed.inner"):
        with pytest.raises(ExperimentError, match=f"--set {bad}: no such place"):
            load_experiment(path, {bad: 1})
