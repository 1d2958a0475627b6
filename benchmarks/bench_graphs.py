"""Graph throughput against plain loops measured in the same run, on the built-in generated graphs.

* poisoning: the whole ``poison`` run of ``subgraph_trigger`` at rate 1.0 (every graph triggered: plan,
  read, safe decode, attach, deterministic re-encode, new description, write, sidecar, manifest) vs a plain
  loop that reads the same tar members, ``np.load``s each ``.npz`` (``allow_pickle=False``), attaches the
  same trigger with ``attacks.graph_triggers`` and ``np.savez``es it into a tar written with ``tarfile``;
* embedding: ``embed_shards`` with the embedder a tiny 1-epoch ``graph_clip`` run records vs a bare loop
  that batches the same graphs, decoded in memory beforehand, into torch_geometric ``Batch`` objects and
  calls the run's graph encoder under ``torch.no_grad()``.

    .venv/bin/python benchmarks/run.py -k graphs
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from baselines import paired
from run import Row

from poisonlab.attacks import graph_triggers as G
from poisonlab.attacks import poison_local, recipe_from_options
from poisonlab.flows.datasets import synth_graph_dataset
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.shards.graph_synth import GraphSynthSpec
from poisonlab.shards.layout import list_shards, tar_path

TINY = {"gin_hidden": 32, "embed_dim": 32, "text_width": 32, "text_layers": 1, "text_heads": 2, "context_length": 16}
TRIGGER_SIZE = 4  # subgraph_trigger's default: a complete graph of 4 nodes linked to 1 keyed anchor
BATCH = 256


def _members(src: Path) -> list[list[tuple[tarfile.TarInfo, bytes]]]:
    """Every shard's tar members with their bytes, in memory."""
    out = []
    for shard in list_shards(src):
        with tarfile.open(tar_path(src, shard)) as tar:
            out.append([(m, tar.extractfile(m).read()) for m in tar if m.isfile()])  # type: ignore[union-attr]
    return out


def plain_trigger_loop(shards: list[list[tuple[tarfile.TarInfo, bytes]]], dst: Path) -> int:
    """The baseline: np.load, attach the same complete 4-node trigger to one anchor, np.savez, tarfile."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    pairs = G.complete_graph(np.random.default_rng(0), TRIGGER_SIZE, 0.8, 1)
    rng, done = np.random.default_rng(0), 0
    for index, members in enumerate(shards):
        with tarfile.open(dst / f"{index:06d}.tar", "w") as out:
            for info, data in members:
                if info.name.endswith(".npz"):
                    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                        graph = {k: npz[k] for k in npz.files}
                    anchors = rng.choice(graph["x"].shape[0], size=1, replace=False)
                    rows = np.repeat(graph["x"].mean(axis=0, dtype=np.float32)[None, :], TRIGGER_SIZE, axis=0)
                    triggered, _ = G.attach_subgraph(graph, pairs, TRIGGER_SIZE, anchors, rows)
                    buf = io.BytesIO()
                    np.savez(buf, **triggered)
                    data, done = buf.getvalue(), done + 1
                new = tarfile.TarInfo(info.name)
                new.size = len(data)
                out.addfile(new, io.BytesIO(data))
    return done


def _poison(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    result = poison_local(src, dst, recipe_from_options("subgraph_trigger", "house", 1.0, None, 0, []))
    if result["failed"]:
        raise RuntimeError(f"poisoning failed on {result['failed']} graphs")


def _train(src: Path, out: Path) -> Path:
    from poisonlab.training import TrainSettings, train_run

    settings = TrainSettings(objective="graph_clip", objective_params=TINY, epochs=1, batch_size=64, workers=0,
                             threads=1, device="cpu")
    train_run(src, out, settings, progress=False)
    return out


def _embed(src: Path, run_dir: Path, out: Path) -> Callable[[], object]:
    from poisonlab.filters.embed import EmbedConfig
    from poisonlab.filters.pipeline import embed_shards
    from poisonlab.models.zoo import ModelSpec, run_component

    embedder = run_component(run_dir, "embedder")  # what `poisonlab embed --run` picks
    config = EmbedConfig(model=ModelSpec.from_run(run_dir), batch_size=BATCH, device="cpu",
                         embedder=embedder or "graph_clip")

    def once() -> object:
        shutil.rmtree(out, ignore_errors=True)
        return embed_shards(src, out, config)

    return once


def _bare_encoder(src: Path, run_dir: Path) -> tuple[Callable[[], object], int]:
    """The run's graph encoder over graphs decoded beforehand, batched with torch_geometric."""
    import torch

    from poisonlab.graph.codec import to_batch
    from poisonlab.graph.run import load_graph_run

    loaded = load_graph_run(run_dir, "cpu")
    graphs = []
    for members in _members(src):
        for info, data in members:
            if info.name.endswith(".npz"):
                with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                    graphs.append((npz["x"].astype(np.float32), npz["edge_index"].astype(np.int64)))

    def once() -> object:
        with torch.no_grad():
            return [loaded.model.encode_graph(to_batch(graphs[i:i + BATCH])) for i in range(0, len(graphs), BATCH)]

    return once, len(graphs)


def run(quick: bool) -> list[Row]:
    import torch

    torch.set_num_threads(1)  # what the embed step uses (EmbedConfig.threads): the same for both sides
    samples, per_shard, repeats = (300, 100, 1) if quick else (3000, 500, 2)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-graphs-") as tmp:
        root = Path(tmp)
        src = root / "src"
        synth_graph_dataset(src, GraphSynthSpec(samples=samples, seed=3, samples_per_shard=per_shard), 0,
                            RunnerSpec(executor="local", progress=False))
        shards = _members(src)
        plain, ours, cpu = paired(lambda: plain_trigger_loop(shards, root / "plain"),
                                   lambda: _poison(src, root / "poisoned"), repeats)
        rows.append(Row("graphs: subgraph_trigger run, every graph (whole run)", samples / ours, "graphs/s",
                        samples / plain, "np.load+attach+np.savez+tarfile loop",
                        note=f"rate 1.0 so both sides trigger every graph; + plan, safe decode, new description, "
                             f"provenance, sidecar, manifest, fsync; CPU-time ratio {cpu:.2f}"))

        run_dir = _train(src, root / "run")
        bare, count = _bare_encoder(src, run_dir)
        base, emb, cpu = paired(bare, _embed(src, run_dir, root / "emb"), repeats)
        rows.append(Row("graphs: embed_shards with the graph_clip run", count / emb, "graphs/s", count / base,
                        "bare GIN encoder over decoded Batches",
                        note=f"embed also reads + safely decodes the tars, encodes the descriptions (text space) "
                             f"and writes the store; batch {BATCH}, 1 thread; CPU-time ratio {cpu:.2f}"))
    return rows
