"""``evaluate`` on a graph run: zero-shot, ASR with the poisoned folder's exact trigger, probe and probe ASR."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from poisonlab.attacks import poison_local
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.flows.cli import app
from poisonlab.graph.evaluation import evaluate_graph_run
from poisonlab.training import TrainSettings, train_run
from poisonlab.training.evaluation import evaluate_run, format_evaluation, headline

SMALL = {"gin_hidden": 32, "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 16}


@pytest.fixture(scope="module")
def poisoned(graph_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph_eval") / "poisoned"
    recipe = parse_recipe({"seed": 7, "attacks": [{"attack": "subgraph_trigger", "target": "house", "count": 9,
                                                   "params": {"kind": "erdos_renyi", "size": 5, "density": 0.6}}]})
    assert poison_local(graph_shards, out, recipe)["poisoned"] == 9
    return out


@pytest.fixture(scope="module")
def victim(poisoned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph_eval") / "victim"
    settings = TrainSettings(objective="graph_clip", objective_params=SMALL, epochs=2, batch_size=14, workers=0,
                             threads=1, device="cpu")
    train_run(poisoned, out, settings, progress=False)
    return out


def test_evaluate_returns_zero_shot_asr_probe_and_probe_asr_in_range(victim: Path, poisoned: Path,
                                                                     graph_shards: Path) -> None:
    result = evaluate_run(victim, graph_shards / "eval", attack_from=poisoned, device="cpu")
    assert result["unit"] == "graphs" and result["graphs"] == 14 and result["classes"] == 7
    assert 0.0 <= result["zero_shot"]["top1"] <= 1.0
    attack = result["attack"]
    assert attack["target"] == "house" and attack["asr"]["n"] == 12  # the 2 house graphs are not triggered
    assert 0.0 <= attack["asr"]["value"] <= 1.0 and 0.0 <= attack["asr"]["clean_target_rate"] <= 1.0
    probe = result["linear_probe"]
    assert probe["train"] + probe["test"] == 14
    assert np.isnan(probe["accuracy"]) or 0.0 <= probe["accuracy"] <= 1.0
    if "probe_asr" in attack:
        assert 0.0 <= attack["probe_asr"]["value"] <= 1.0
    assert headline(result)["attack_success"] == attack["asr"]["value"]
    assert "graphs" in format_evaluation(result) and "ASR" in format_evaluation(result)


def test_the_asr_uses_the_exact_trigger(victim: Path, poisoned: Path, graph_shards: Path) -> None:
    """A model that maps every triggered graph to what it maps the clean one to would score the untriggered
    rate: the triggered graphs really differ (the embeddings move)."""
    from poisonlab.attacks import load_attack
    from poisonlab.graph.evaluation import graph_features, load_graph_eval_split
    from poisonlab.graph.run import load_graph_run

    loaded = load_graph_run(victim)
    split = load_graph_eval_split(graph_shards / "eval", loaded.cfg.in_features)
    spec = load_attack(poisoned)
    clean = graph_features(loaded, split.samples, "cpu")
    triggered = graph_features(loaded, [spec.apply_sample(s) for s in split.samples], "cpu")
    assert not np.allclose(clean.numpy(), triggered.numpy())
    assert all(t.meta["nodes"] == s.meta["nodes"] + 5 for s, t in
               zip(split.samples, [spec.apply_sample(s) for s in split.samples], strict=True))


def test_evaluate_a_graph_run_from_the_command_line(cli, victim: Path, poisoned: Path, graph_shards: Path) -> None:
    res = cli.invoke(app, ["evaluate", "--run", str(victim), "--eval", str(graph_shards / "eval"), "--attack-from",
                           str(poisoned), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert 0.0 <= result["zero_shot"]["top1"] <= 1.0 and 0.0 <= result["attack"]["asr"]["value"] <= 1.0


def test_an_image_split_for_a_graph_run_is_a_one_line_error(cli, victim: Path, eval_split: Path) -> None:
    res = cli.invoke(app, ["evaluate", "--run", str(victim), "--eval", str(eval_split), "--device", "cpu"])
    one_line_error(res, "no labelled graphs")


def test_an_attack_of_another_dataset_is_refused(victim: Path, graph_shards: Path, tmp_path: Path) -> None:
    from conftest import make_graph_synth

    from poisonlab.training.eval_data import EvalError

    other = tmp_path / "other"
    src = make_graph_synth(tmp_path / "src", samples=28, seed=5, per_shard=28)
    recipe = parse_recipe({"seed": 1, "attacks": [{"attack": "subgraph_trigger", "target": "house", "count": 3}]})
    poison_local(src, other, recipe)
    with pytest.raises(EvalError, match="trained on other data"):
        evaluate_graph_run(victim, graph_shards / "eval", attack_from=other, device="cpu")
