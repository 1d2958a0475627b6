"""The graph_clip objective trains through the same loop, run folder and resume as CLIP."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import one_line_error
from safetensors.torch import load_file

from poisonlab.flows.cli import app
from poisonlab.graph.run import is_graph_run, load_graph_run
from poisonlab.training import TrainSettings, local_update, train_run
from poisonlab.training.data import DataError

SMALL = {"gin_hidden": 32, "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 16}


def graph_settings(**overrides: object) -> TrainSettings:
    base = {"objective": "graph_clip", "objective_params": SMALL, "epochs": 2, "batch_size": 14, "lr": 3e-3,
            "warmup_steps": 1, "workers": 0, "threads": 1, "device": "cpu", "log_every": 1}
    return TrainSettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def graph_run(graph_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graph_run") / "run"
    train_run(graph_shards, out, graph_settings(), progress=False)
    return out


def test_the_loss_goes_down_over_a_few_steps(graph_shards: Path) -> None:
    settings = graph_settings(lr=5e-3)
    state, first = local_update(None, graph_shards, settings, steps=2)
    for _ in range(4):
        state, last = local_update(state, graph_shards, settings, steps=2)
    assert last.mean_loss < first.mean_loss - 0.05, (first.mean_loss, last.mean_loss)


def test_the_run_folder_is_a_graph_checkpoint_with_metrics(graph_run: Path) -> None:
    for name in ("model.safetensors", "model_config.json", "metrics_steps.csv", "metrics_epochs.csv", "loss.png",
                 "train_summary.json"):
        assert (graph_run / name).is_file(), name
    assert is_graph_run(graph_run)
    steps = pd.read_csv(graph_run / "metrics_steps.csv")
    assert "logit_scale" in steps.columns and len(steps) == 2 * (84 // 14)
    loaded = load_graph_run(graph_run)
    assert any(k.startswith("graph.gin.") for k in loaded.model.state_dict())


def test_the_same_seed_gives_byte_identical_weights(graph_shards: Path, graph_run: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    train_run(graph_shards, again, graph_settings(), progress=False)
    assert (again / "model.safetensors").read_bytes() == (graph_run / "model.safetensors").read_bytes()
    other = tmp_path / "other"
    train_run(graph_shards, other, graph_settings(seed=1), progress=False)
    assert (other / "model.safetensors").read_bytes() != (graph_run / "model.safetensors").read_bytes()


def test_resume_gives_the_weights_of_an_uninterrupted_run(graph_shards: Path, graph_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    assert train_run(graph_shards, out, graph_settings(), progress=False, stop_after_epoch=1) is None
    train_run(graph_shards, out, graph_settings(), resume=True, progress=False)
    resumed, whole = load_file(str(out / "model.safetensors")), load_file(str(graph_run / "model.safetensors"))
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_a_graph_objective_refuses_image_shards(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="graph_clip.*npz"):
        train_run(tiny_shards, tmp_path / "run", graph_settings(), progress=False)


def test_clip_refuses_graph_shards(graph_shards: Path, tmp_path: Path) -> None:
    settings = TrainSettings(epochs=1, batch_size=8, workers=0, threads=1, device="cpu")
    with pytest.raises(DataError, match="'clip'.*npz"):
        train_run(graph_shards, tmp_path / "run", settings, progress=False)


def test_the_command_line_trains_graphs_and_refuses_images_in_one_line(cli, graph_shards: Path, tiny_shards: Path,
                                                                        tmp_path: Path) -> None:
    args = ["train", "--objective", "graph_clip", "--epochs", "1", "--batch-size", "14", "--data-workers", "0",
            "--device", "cpu", "--json"] + [a for k, v in SMALL.items() for a in ("--objective-param", f"{k}={v}")]
    res = cli.invoke(app, [*args, "--in", str(graph_shards), "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    assert is_graph_run(tmp_path / "ok")
    res = cli.invoke(app, [*args, "--in", str(tiny_shards), "--out", str(tmp_path / "bad")])
    one_line_error(res, "graph_clip", "npz")


CL_SMALL = {"gin_hidden": 32, "embed_dim": 32, "rate": 0.2}


def test_graphcl_views_change_the_batch_but_keep_it_valid(graph_shards: Path) -> None:
    from poisonlab.graph.augment import AUGMENTATIONS, GraphView
    from poisonlab.graph.codec import graph_arrays, to_batch
    from poisonlab.shards.reader import read_shard
    from poisonlab.training.data import read_policy

    samples = list(read_shard(graph_shards, "00000", read_policy(graph_shards)))[:8]
    view = GraphView.of(to_batch([graph_arrays(s.payload, 12) for s in samples]))
    torch.manual_seed(0)
    for name, augment in AUGMENTATIONS.items():
        out = augment(view, 0.3)
        changed = (out.x.shape != view.x.shape or out.edge_index.shape != view.edge_index.shape
                   or not torch.equal(out.x, view.x) or not torch.equal(out.edge_index, view.edge_index))
        assert changed, name
        assert out.edge_index.numel() == 0 or int(out.edge_index.max()) < out.x.shape[0], name
        assert torch.equal(out.batch[out.edge_index[0]], out.batch[out.edge_index[1]]), name  # edges stay inside graphs
        assert out.num_graphs == 8


def test_graphcl_trains_deterministically_and_its_run_has_only_a_graph_space(graph_shards: Path, tmp_path: Path) -> None:
    settings = graph_settings(objective="graphcl", objective_params=CL_SMALL, epochs=1)
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(graph_shards, a, settings, progress=False)
    train_run(graph_shards, b, settings, progress=False)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    loaded = load_graph_run(a)
    assert not loaded.model.has_text and not any(k.startswith("text.") for k in loaded.model.state_dict())
    steps = pd.read_csv(a / "metrics_steps.csv")
    assert steps["loss"].notna().all() and len(steps) == 84 // 14
    from poisonlab.training.evaluation import evaluate_run

    result = evaluate_run(a, graph_shards / "eval", device="cpu")
    assert result["zero_shot"]["n"] == 0 and result["linear_probe"]["train"] + result["linear_probe"]["test"] == 14


def test_graphcl_refuses_unknown_augmentations(graph_shards: Path, tmp_path: Path) -> None:
    from poisonlab.pipelines.registry import RegistryError

    with pytest.raises(RegistryError, match="augmentations must be some of.*rotate"):
        train_run(graph_shards, tmp_path / "r", graph_settings(objective="graphcl",
                  objective_params={"augmentations": "drop_nodes,rotate"}), progress=False)


def test_the_subgraph_view_keeps_a_connected_neighbourhood_of_each_graph() -> None:
    """On paths the kept share of each graph must be one contiguous run of nodes around the seed."""
    from poisonlab.graph.augment import GraphView, crop_subgraph

    sizes = (10, 7, 1)
    chains, batch, first = [], [], 0
    for graph, size in enumerate(sizes):
        ends = torch.arange(first, first + size - 1)
        chains.append(torch.stack([torch.cat([ends, ends + 1]), torch.cat([ends + 1, ends])]))
        batch += [graph] * size
        first += size
    x = torch.arange(first, dtype=torch.float32).unsqueeze(1)  # a node's feature is its id: kept ids are visible
    view = GraphView(x, torch.cat(chains, dim=1), torch.tensor(batch), len(sizes))
    for seed in range(5):
        torch.manual_seed(seed)
        out = crop_subgraph(view, 0.5)
        for graph, size in enumerate(sizes):
            kept = sorted(int(i) for i in out.x[out.batch == graph, 0])
            assert len(kept) == max(1, -(-size // 2)), (seed, graph, kept)
            assert kept == list(range(kept[0], kept[0] + len(kept))), (seed, graph, kept)  # contiguous
        assert out.edge_index.shape[1] == 2 * sum(max(0, -(-s // 2) - 1) for s in sizes)  # the path between them
