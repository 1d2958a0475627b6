"""Evaluation: every metric on a real (tiny) run, the exact trigger, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poisonlab.attacks import load_attack, poison_local
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.pipelines.executor import run_local
from poisonlab.shards.plan import finalize_folder, plan_source_tasks
from poisonlab.shards.synth import SynthSource, SynthSpec, write_eval_metadata
from poisonlab.training import (
    EvalError,
    TrainSettings,
    evaluate_run,
    evaluate_run_attacks,
    format_evaluation,
    train_run,
)
from poisonlab.training.attack_eval import ASR_DEFINITION, image_asr, load_attack_under_test, triggered_images
from poisonlab.training.eval_data import load_eval_split
from poisonlab.training.probe import probe_split
from poisonlab.training.retrieval import recall_at_k

RECIPE = {"seed": 1, "attacks": [{"attack": "badnets", "target": "red circle", "count": 12}]}


def make_eval_split(out: Path, per_class: int = 4) -> Path:
    spec = SynthSpec(samples=24 * per_class, seed=5, samples_per_shard=48, partial_rate=0, noise_rate=0, junk_rate=0)
    src = SynthSource(spec, split="eval", balanced=True)
    finalize_folder(out, run_local(plan_source_tasks(src, src.shards(), out)))
    write_eval_metadata(out)
    return out


@pytest.fixture(scope="module")
def lab(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evallab")
    poisoned = root / "poisoned"
    poison_local(tiny_shards, poisoned, parse_recipe(RECIPE))
    run = root / "run"
    train_run(poisoned, run, TrainSettings(epochs=1, batch_size=32, shuffle_buffer=64), progress=False)
    return {"eval": make_eval_split(root / "eval"), "poisoned": poisoned, "run": run, "root": root}


def test_every_metric_on_a_trained_run(lab: dict[str, Path]) -> None:
    result = evaluate_run(lab["run"], lab["eval"], lab["poisoned"])
    assert result["images"] == 96 and result["classes"] == 24
    assert 0 <= result["zero_shot"]["top1"] <= 1
    assert 0 <= result["linear_probe"]["accuracy"] <= 1 and result["linear_probe"]["test"] > 0
    r = result["retrieval"]
    assert 0 <= r["image_to_text_r1"] <= r["image_to_text_r5"] <= 1
    assert 0 <= r["text_to_image_r1"] <= r["text_to_image_r5"] <= 1
    asr = result["attack"]["asr"]
    assert asr["n"] == 92 and asr["definition"] == ASR_DEFINITION  # 96 images minus the 4 of the target class
    assert 0 <= asr["value"] <= 1
    text = format_evaluation(result)
    assert "NOT the target" in text and "zero-shot top-1" in text
    json.dumps(result)
    assert evaluate_run(lab["run"], lab["eval"], lab["poisoned"]) | {"seconds": 0} == result | {"seconds": 0}


def test_several_attacks_at_once_give_each_attack_its_own_evaluation(lab: dict[str, Path], tiny_shards: Path,
                                                                     tmp_path: Path) -> None:
    """The experiment measures every attack of a multi-attack folder from one model load: each result is the
    one evaluate_run gives for that attack alone, and the attacks differ where they should."""
    two = {"seed": 2, "attacks": [{"id": "patch", "attack": "badnets", "target": "red circle", "count": 6},
                                  {"id": "words", "attack": "text_trigger", "target": "blue square", "count": 6,
                                   "params": {"dirty_label": True, "phrase": "cf"}}]}
    poisoned = tmp_path / "two"
    poison_local(tiny_shards, poisoned, parse_recipe(two))
    together = evaluate_run_attacks(lab["run"], lab["eval"], poisoned, ["patch", "words"], force=True)
    for attack_id in ("patch", "words"):
        alone = evaluate_run(lab["run"], lab["eval"], poisoned, attack_id, force=True)
        assert together[attack_id] | {"seconds": 0} == alone | {"seconds": 0}
    assert together["patch"]["attack"]["target"] == "red circle" and "asr" in together["patch"]["attack"]
    assert together["words"]["attack"]["target"] == "blue square" and "text_asr" in together["words"]["attack"]


def test_trigger_is_the_one_the_poisoning_run_used(lab: dict[str, Path]) -> None:
    split = load_eval_split(lab["eval"])
    attack = load_attack_under_test(lab["poisoned"])
    spec = load_attack(lab["poisoned"])
    target = split.label_of("red circle")
    images, rows = triggered_images(split, attack, target)
    assert len(images) == 92 and target not in split.labels[rows]
    # the patch lands where the poisoning run put it: bottom-right corner, identical before JPEG re-encoding
    raw = spec.apply_image(split.images[rows[0]], split.keys[rows[0]])
    assert np.abs(images[0].astype(int) - raw.astype(int)).mean() < 3
    assert not np.array_equal(raw[-4:, -4:], split.images[rows[0]][-4:, -4:])


def test_asr_counts_only_triggered_non_target_images() -> None:
    m = image_asr(np.array([3, 3, 1, 3]), np.array([0, 1, 1, 2]), target=3)
    assert m["value"] == 0.75 and m["n"] == 4 and m["clean_target_rate"] == 0.0


def test_retrieval_and_probe_split() -> None:
    feats = torch.nn.functional.normalize(torch.eye(6), dim=1)
    caps = ["a", "b", "c", "d", "e", "f"]
    r = recall_at_k(feats, feats, caps)
    assert r["image_to_text_r1"] == 1.0 and r["text_to_image_r1"] == 1.0
    shuffled = recall_at_k(feats, feats[[1, 0, 2, 3, 4, 5]], caps)
    assert shuffled["image_to_text_r1"] == pytest.approx(4 / 6)
    # identical captions are interchangeable
    assert recall_at_k(feats, feats[[1, 0, 2, 3, 4, 5]], ["a", "a", "c", "d", "e", "f"])["image_to_text_r1"] == 1.0
    keys = [f"k{i}" for i in range(500)]
    split = probe_split(keys)
    assert np.array_equal(split, probe_split(list(reversed(keys)))[::-1]) and 0.5 < split.mean() < 0.7


def test_split_without_class_names_is_a_clear_error(lab: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(lab["eval"], bare)
    (bare / "classes.json").unlink()
    with pytest.raises(EvalError, match="class names"):
        evaluate_run(lab["run"], bare)
    (bare / "classes.json").write_text(json.dumps({"classnames": [], "templates": ["a {}."]}))
    with pytest.raises(EvalError, match="no class names"):
        evaluate_run(lab["run"], bare)


def test_run_without_checkpoint_is_a_clear_error(lab: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(EvalError, match="no usable checkpoint"):
        evaluate_run(tmp_path / "empty-run", lab["eval"])
    with pytest.raises(EvalError, match="does not exist"):
        evaluate_run(tmp_path / "missing", lab["eval"])


def test_attack_that_cannot_be_reproduced_is_a_clear_error(lab: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="does not exist"):
        evaluate_run(lab["run"], lab["eval"], tmp_path / "nowhere")
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    spec = json.loads((lab["poisoned"] / "attack.json").read_text())
    spec["attacks"][0]["params"]["placement"] = "top_left"  # edited after the run: not the trigger it used
    (tampered / "attack.json").write_text(json.dumps(spec))
    with pytest.raises(EvalError, match="cannot rebuild the attack"):
        evaluate_run(lab["run"], lab["eval"], tampered)
    other = tmp_path / "other-target"
    other.mkdir()
    recipe = other / "r.yaml"
    recipe.write_text("seed: 0\nattacks:\n  - {attack: badnets, target: purple hexagon, count: 1}\n")
    with pytest.raises(EvalError, match="purple hexagon"):
        evaluate_run(lab["run"], lab["eval"], recipe)


def test_train_and_evaluate_commands(lab: dict[str, Path], tiny_shards: Path, tmp_path: Path) -> None:
    import importlib

    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    cli = CliRunner()
    run = tmp_path / "cli-run"
    res = cli.invoke(app, ["train", "--in", str(tiny_shards), "--out", str(run), "--epochs", "1", "--batch-size", "48",
                           "--lr", "5e-4", "--seed", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["samples"] == 240 and (run / "model.safetensors").exists()
    res = cli.invoke(app, ["train", "--in", str(tiny_shards), "--out", str(run), "--epochs", "1", "--batch-size", "48"])
    assert res.exit_code == 2 and "--resume" in res.output
    res = cli.invoke(app, ["evaluate", "--run", str(run), "--eval", str(lab["eval"]), "--attack-from",
                           str(lab["poisoned"]), "--save", str(tmp_path / "ev.json")])
    assert res.exit_code == 0, res.output
    assert "ASR" in res.output and "NOT the target" in res.output
    assert json.loads((tmp_path / "ev.json").read_text())["attack"]["target"] == "red circle"
    res = cli.invoke(app, ["evaluate", "--run", str(tmp_path), "--eval", str(lab["eval"])])
    assert res.exit_code == 2 and "checkpoint" in res.output


def test_an_attack_of_another_dataset_is_refused_unless_forced(lab: dict[str, Path], tiny_shards: Path,
                                                               tmp_path: Path) -> None:
    from conftest import make_synth

    from poisonlab.shards.fingerprint import dataset_fingerprint

    lineage = json.loads((lab["run"] / "data.json").read_text())["lineage"]
    assert lineage == [dataset_fingerprint(lab["poisoned"]), dataset_fingerprint(tiny_shards)]  # the folder, its source
    other = tmp_path / "other_poisoned"
    poison_local(make_synth(tmp_path / "other", samples=120, seed=9), other, parse_recipe(RECIPE))
    with pytest.raises(EvalError, match="trained on other data"):
        evaluate_run(lab["run"], lab["eval"], other)
    forced = evaluate_run(lab["run"], lab["eval"], other, force=True)
    assert "because of --force" in forced["warnings"][0] and "asr" in forced["attack"]
    old = tmp_path / "old-run"
    shutil.copytree(lab["run"], old)
    (old / "data.json").unlink()  # a run trained before lineages were recorded
    assert "no dataset fingerprint" in evaluate_run(old, lab["eval"], lab["poisoned"])["warnings"][0]
    assert evaluate_run(lab["run"], lab["eval"], lab["poisoned"])["warnings"] == []
