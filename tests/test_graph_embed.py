"""A graph run's embeddings land in the store (spaces graph and text) and every detector scores them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error

from poisonlab.filters.store import read_info
from poisonlab.flows.cli import app
from poisonlab.training import TrainSettings, train_run

SMALL = {"gin_hidden": 32, "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 16}
DETECTORS = ["kdist:k=4,space=graph", "dao:k=4,space=graph", "slof:k=4,space=graph", "lid:k=4,space=graph",
             "isolation_forest:space=graph,n_estimators=20", "spectral:space=graph", "text_kdist=kdist:k=4,space=text"]


@pytest.fixture(scope="module")
def graph_run(graph_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph_embed") / "run"
    settings = TrainSettings(objective="graph_clip", objective_params=SMALL, epochs=1, batch_size=14, workers=0,
                             threads=1, device="cpu")
    train_run(graph_shards, out, settings, progress=False)
    return out


@pytest.fixture(scope="module")
def graph_store(cli, graph_shards: Path, graph_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph_emb") / "emb"
    res = cli.invoke(app, ["embed", str(graph_shards), "--out", str(out), "--run", str(graph_run), "--device", "cpu",
                           "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["written"] == result["samples"] == 84
    return Path(result["store"])


def test_embed_on_a_graph_run_writes_graph_and_text_spaces(graph_store: Path) -> None:
    assert read_info(graph_store).spaces == {"graph": 32, "text": 32}


def test_every_detector_scores_the_graph_space(cli, graph_store: Path, tmp_path: Path) -> None:
    args = ["scan", str(graph_store), "--out", str(tmp_path / "scores"), "--json"]
    res = cli.invoke(app, args + [a for d in DETECTORS for a in ("--detector", d)])
    assert res.exit_code == 0, res.output
    tables = sorted((tmp_path / "scores").rglob("*.parquet"))
    assert tables
    scores = pd.concat([pd.read_parquet(t) for t in tables])
    numeric = scores.select_dtypes(include=[np.number])
    assert len(numeric.columns) >= len(DETECTORS)
    assert np.isfinite(numeric.to_numpy(dtype=float)).all()
    assert len(scores) == 84


def test_a_detector_on_the_image_space_of_a_graph_store_is_a_one_line_error(cli, graph_store: Path,
                                                                             tmp_path: Path) -> None:
    res = cli.invoke(app, ["scan", str(graph_store), "--out", str(tmp_path / "s"), "--detector", "kdist:k=4,space=image"])
    one_line_error(res, "image")


def _scores(cli, store: Path, out: Path, *detectors: str) -> pd.DataFrame:
    res = cli.invoke(app, ["scan", str(store), "--out", str(out), "--json"] + [a for d in detectors for a in ("--detector", d)])
    assert res.exit_code == 0, res.output
    return pd.concat([pd.read_parquet(t) for t in sorted(out.rglob("*.parquet"))]).set_index("key").sort_index()


def test_detectors_named_without_a_space_score_the_graph_space_and_the_default_runs(cli, graph_store: Path,
                                                                                    tmp_path: Path) -> None:
    """The payload's own space (``sample``) is the default, so a user names no space on graphs; the
    rate-free default and CLIP score (graph against its description) run unchanged."""
    named = _scores(cli, graph_store, tmp_path / "named", "a=kdist:k=4,space=graph", "b=clip_score")
    unnamed = _scores(cli, graph_store, tmp_path / "unnamed", "a=kdist:k=4", "b=clip_score", "c=default")
    np.testing.assert_array_equal(named["a"].to_numpy(), unnamed["a"].to_numpy())
    assert np.isfinite(unnamed[["a", "b", "c"]].to_numpy(dtype=float)).all()
    assert unnamed["b"].std() > 0


def test_a_graph_only_run_embeds_only_the_graph_space(cli, graph_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "cl"
    settings = TrainSettings(objective="graphcl", objective_params={"gin_hidden": 16, "embed_dim": 16}, epochs=1,
                             batch_size=14, workers=0, threads=1, device="cpu")
    train_run(graph_shards, run, settings, progress=False)
    res = cli.invoke(app, ["embed", str(graph_shards), "--out", str(tmp_path / "emb"), "--run", str(run), "--device",
                           "cpu", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    store = Path(json.loads(res.stdout)["store"])
    assert read_info(store).spaces == {"graph": 16}
    res = cli.invoke(app, ["scan", str(store), "--out", str(tmp_path / "scores"), "--detector", "kdist:k=4,space=graph",
                           "--json"])
    assert res.exit_code == 0, res.output
