"""The generated graph dataset: same seed, same bytes; classes in the structure; the eval split and its
``classes.json``; ``poisonlab synth --modality graph`` records the modality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from conftest import files, make_graph_synth

from poisonlab.flows.cli import app
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.shards.dataset import read_dataset_record
from poisonlab.shards.graph_synth import (
    CLASSNAMES,
    MOTIFS,
    GraphSynthSpec,
    barabasi_albert,
    degree_features,
    make_graph_sample,
    undirected_index,
)
from poisonlab.shards.graphs import decode_graph


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    one = files(make_graph_synth(tmp_path / "a", samples=30, seed=5, per_shard=12))
    two = files(make_graph_synth(tmp_path / "b", samples=30, seed=5, per_shard=12))
    other = files(make_graph_synth(tmp_path / "c", samples=30, seed=6, per_shard=12))
    assert one == two and len(one) == 3 * 3 + 2  # tar, sidecar, stats per shard; sizes.json, dataset.json
    assert one["00000.tar"] != other["00000.tar"]


def test_a_sample_is_a_function_of_seed_and_key_alone() -> None:
    spec = GraphSynthSpec(samples=40, seed=3, samples_per_shard=10)
    assert make_graph_sample(spec, 17) == make_graph_sample(spec, 17)  # in any order, on any worker


def test_classes_are_motifs_on_a_barabasi_albert_base() -> None:
    assert len(CLASSNAMES) >= 6 and {"house", "cycle", "grid", "star", "wheel", "clique"} <= set(CLASSNAMES)
    assert {name: len(MOTIFS[name]()[1]) for name in ("house", "cycle", "grid", "star", "wheel", "clique")} == {
        "house": 6, "cycle": 6, "grid": 12, "star": 6, "wheel": 12, "clique": 10}
    edges = barabasi_albert(keyed_rng(0, "t", "k"), 25, 2)
    assert len(edges) == 3 + 2 * (25 - 3) and max(max(e) for e in edges) == 24
    spec = GraphSynthSpec(samples=50, seed=1)
    for index in range(14):
        sample = make_graph_sample(spec, index)
        g = decode_graph(sample.payload)
        n = g["x"].shape[0]
        assert 15 + 5 <= n <= 30 + 9 and g["y"].tolist() == [sample.meta["label"]]
        assert sample.meta["nodes"] == n and sample.meta["edges"] == g["edge_index"].shape[1]
        src, dst = g["edge_index"]
        assert set(zip(src.tolist(), dst.tolist(), strict=True)) == set(zip(dst.tolist(), src.tolist(), strict=True))
        assert g["x"].shape[1] == spec.degree_cap + 2 and np.all(g["x"][:, -1] == 1)
        assert np.array_equal(g["x"].argmax(1)[g["x"][:, :-1].sum(1) > 0],
                              np.minimum(np.bincount(src, minlength=n), spec.degree_cap))


def test_degree_features_are_one_hot_capped() -> None:
    index = undirected_index([(0, i) for i in range(1, 13)], 13)
    x = degree_features(index, 13, 10)
    assert x.shape == (13, 12) and x[0, 10] == 1 and x[1, 1] == 1 and x.sum() == 13 * 2


def test_descriptions_name_the_class_mostly_and_vary() -> None:
    spec = GraphSynthSpec(samples=300, seed=0)
    samples = [make_graph_sample(spec, i) for i in range(300)]
    naming = sum(s.meta["class"] in (s.text or "") for s in samples)
    assert 0.7 * 300 < naming < 300 and len({s.text for s in samples}) > 150


def test_synth_command_writes_a_graph_dataset_and_its_eval_split(cli, tmp_path: Path) -> None:
    out = tmp_path / "g"
    res = cli.invoke(app, ["synth", "--modality", "graph", "--out", str(out), "--samples", "20", "--seed", "2",
                           "--samples-per-shard", "10", "--eval-per-class", "1", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    assert read_dataset_record(out).modality == "graph" and read_dataset_record(out / "eval").modality == "graph"
    classes = json.loads((out / "eval" / "classes.json").read_text())
    assert classes["classnames"] == list(CLASSNAMES) and classes["label_key"] == "label" and classes["templates"]
    side = pq.read_table(out / "00000.parquet").to_pylist()
    assert all(r["payload_ext"] == "npz" and r["nodes"] > 0 and r["edges"] > 0 and r["sha256"] for r in side)
    evals = pq.read_table(out / "eval" / "00000.parquet").column("label").to_pylist()
    assert sorted(evals) == list(range(len(CLASSNAMES)))
    bad = cli.invoke(app, ["synth", "--modality", "audio", "--out", str(tmp_path / "x"), "--executor", "local"])
    assert bad.exit_code == 2 and "unknown modality 'audio'" in bad.output
