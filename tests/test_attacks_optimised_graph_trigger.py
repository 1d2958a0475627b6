"""``optimised_graph_trigger`` (GCBA-style): a trigger subgraph whose features are optimised on a surrogate graph
run when the run is planned, carried by the spec as an asset, attached exactly where the manifest says, and
applied byte for byte to the evaluation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from test_graph_attacks import graphs_of, triggered_graphs

from poisonlab.attacks import apply_trigger_to_eval, load_attack, poison_local, read_manifest
from poisonlab.attacks.assets import AssetError
from poisonlab.attacks.captions import mention_pattern, mentions
from poisonlab.attacks.graph_attacks import GRAPH_TARGET_TEMPLATES, keyed_anchors, trigger_pairs
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.flows.cli import app
from poisonlab.graph.run import load_graph_run
from poisonlab.graph.trigger_optimiser import (
    GraphTriggerProblem,
    graph_direction,
    optimise_trigger,
    sample_graphs,
    text_direction,
    trigger_arrays,
)
from poisonlab.training import TrainSettings, train_run

SMALL = {"gin_hidden": 32, "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 16}
FAST = {"steps": 30, "lr": 0.1, "sample_graphs": 24, "size": 4, "anchors": 2}


def _train(src: Path, out: Path, objective: str, params: dict) -> Path:
    settings = TrainSettings(objective=objective, objective_params=params, epochs=1, batch_size=14, workers=0,
                             threads=1, device="cpu")
    train_run(src, out, settings, progress=False)
    return out


@pytest.fixture(scope="module")
def surrogate(graph_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph CLIP trained for one epoch on the generated graphs (a few seconds)."""
    return _train(graph_shards, tmp_path_factory.mktemp("ogt") / "clip", "graph_clip", SMALL)


@pytest.fixture(scope="module")
def graphcl(graph_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph-only encoder (no text tower): the target is the mean embedding of graphs naming it."""
    return _train(graph_shards, tmp_path_factory.mktemp("ogt") / "gcl", "graphcl", {"gin_hidden": 32, "embed_dim": 32})


def _recipe(surrogate: Path, **params: object) -> dict:
    return {"seed": 7, "attacks": [{"attack": "optimised_graph_trigger", "target": "house", "count": 6,
                                    "params": {"surrogate": str(surrogate), **FAST, **params}}]}


@pytest.fixture(scope="module")
def run(graph_shards: Path, surrogate: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ogt") / "run"
    result = poison_local(graph_shards, out, parse_recipe(_recipe(surrogate)))
    assert result["poisoned"] == 6 and result["failed"] == 0
    return out


def _problem(seed: int, steps: int) -> GraphTriggerProblem:
    pairs = trigger_pairs(seed, "a", "complete", 8, 0.8, 1)
    return GraphTriggerProblem(pairs=np.asarray(pairs), size=8, steps=steps, lr=0.1, in_range=True, start="mean")


def _optimise(run_dir: Path, graph_shards: Path, seed: int = 1, steps: int = 30) -> tuple[np.ndarray, list[float]]:
    loaded = load_graph_run(run_dir)
    pattern = mention_pattern("house")
    text = loaded.model.has_text
    graphs = sample_graphs(graph_shards, 24, loaded.cfg.in_features, lambda c: mentions(c, pattern), not text,
                           seed, "a")
    assert len(graphs.others) == 24 and (text or graphs.targets)
    direction = text_direction(loaded.model, loaded.tokenizer, "house", GRAPH_TARGET_TEMPLATES) if text else \
        graph_direction(loaded.model, graphs.targets)
    return optimise_trigger(loaded.model, graphs.others, graphs.keys,
                            lambda key, n: keyed_anchors(seed, "a", key, n, 2), direction, _problem(seed, steps))


@pytest.mark.parametrize("which", ["surrogate", "graphcl"])
def test_optimising_moves_triggered_graphs_toward_the_target(request: pytest.FixtureRequest, graph_shards: Path,
                                                              which: str) -> None:
    run_dir = request.getfixturevalue(which)
    features, losses = _optimise(run_dir, graph_shards)
    assert features.shape == (8, 12) and features.dtype == np.float32 and len(losses) == 31
    before, after = 1 - losses[0], 1 - losses[-1]  # mean cosine to the target, initial vs optimised trigger
    assert after > before + 0.02, (which, before, after)
    pattern = mention_pattern("house")
    sampled = sample_graphs(graph_shards, 24, 12, lambda c: mentions(c, pattern), False, 1, "a").others
    clean = np.concatenate([x for x, _ in sampled])  # the graphs optimised over: their range bounds the trigger
    assert np.all(features >= clean.min(axis=0) - 1e-6) and np.all(features <= clean.max(axis=0) + 1e-6)  # in range
    again, _ = _optimise(run_dir, graph_shards)
    assert again.tobytes() == features.tobytes()
    print(f"{which}: cosine to target {before:.3f} -> {after:.3f}")


def test_the_trigger_is_attached_exactly_where_the_manifest_says(graph_shards: Path, run: Path) -> None:
    spec = load_attack(run)
    assert spec.record.pattern is not None and spec.record.pattern.ext == "npz"  # the trigger travels with the spec
    pairs, features = trigger_arrays((run / spec.record.pattern.relpath).read_bytes())
    assert np.array_equal(pairs, trigger_pairs(7, "optimised_graph_trigger", "complete", 4, 0.8, 1))
    for key, graph, text, before, _before_text, place, _row in triggered_graphs(graph_shards, run, 6, 4):
        n = before["x"].shape[0]
        assert place["trigger_sha256"] == spec.record.pattern.sha256
        assert np.array_equal(graph["x"][n:], features)
        assert place["anchors"] == keyed_anchors(7, "optimised_graph_trigger", key, n, 2).tolist()
        assert "house" in text


def test_the_same_seed_gives_byte_identical_shards_and_asset(graph_shards: Path, surrogate: Path, run: Path,
                                                              tmp_path: Path) -> None:
    again = tmp_path / "again"
    poison_local(graph_shards, again, parse_recipe(_recipe(surrogate)))
    ref = load_attack(run).record.pattern
    assert load_attack(again).record.pattern == ref
    assert (again / ref.relpath).read_bytes() == (run / ref.relpath).read_bytes()
    for tar in sorted(run.glob("*.tar")):
        assert (again / tar.name).read_bytes() == tar.read_bytes(), tar.name


def test_the_eval_split_gets_the_exact_saved_trigger(graph_shards: Path, run: Path, tmp_path: Path) -> None:
    spec = load_attack(run)
    _, features = trigger_arrays((run / spec.record.pattern.relpath).read_bytes())
    result = apply_trigger_to_eval(graph_shards / "eval", run, tmp_path / "ev")
    assert result["by_status"] == {"changed": 12, "dropped": 2}
    assert (tmp_path / "ev" / spec.record.pattern.relpath).is_file()  # the eval folder carries the asset
    triggered, clean = graphs_of(tmp_path / "ev"), graphs_of(graph_shards / "eval")
    for row in read_manifest(tmp_path / "ev").to_pylist():
        place = json.loads(row["placement"])
        graph, before = triggered[row["key"]][0], clean[row["key"]][0]
        n = place["nodes_before"]
        assert np.array_equal(graph["x"][n:], features) and np.array_equal(graph["x"][:n], before["x"])
        assert place["trigger_sha256"] == spec.record.pattern.sha256


def test_a_spec_from_a_recipe_alone_cannot_optimise(surrogate: Path, tmp_path: Path) -> None:
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(surrogate)))
    with pytest.raises(AssetError, match="optimises its trigger on the dataset"):
        load_attack(recipe)


@pytest.mark.parametrize("surrogate_of", ["missing", "image_run"])
def test_a_bad_surrogate_is_a_one_line_error_before_anything_is_written(cli, graph_shards: Path, tmp_path: Path,
                                                                         surrogate_of: str) -> None:
    bad = tmp_path / surrogate_of
    if surrogate_of == "image_run":
        bad.mkdir()
        (bad / "model_config.json").write_text(json.dumps({"arch": "poisonlab-tiny-32"}))
    res = cli.invoke(app, ["poison", "--in", str(graph_shards), "--out", str(tmp_path / "o"), "--attack",
                           "optimised_graph_trigger", "--target", "house", "--count", "2", "--param",
                           f"surrogate={bad}", "--executor", "local"])
    one_line_error(res, "surrogate", str(bad))
    assert not (tmp_path / "o").exists()
