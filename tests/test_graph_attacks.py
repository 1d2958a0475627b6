"""Graph attacks through ``poison`` unchanged: the trigger lands exactly where the manifest says and nothing
else changes; the modality comes from the dataset record; attacks and datasets of the wrong modality are a
one-line error; the evaluation split gets the very same trigger."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error

from poisonlab.attacks import apply_trigger_to_eval, load_attack, poison_local, read_manifest
from poisonlab.attacks.base import PAYLOAD_TRIGGER, attack_capabilities
from poisonlab.attacks.graph_attacks import trigger_pairs
from poisonlab.attacks.graph_triggers import TRIGGER_GRAPHS, attach_subgraph
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.flows.cli import app
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.shards.graphs import decode_graph, encode_graph


def graphs_of(folder: Path) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    """Every graph of a folder with its description, by key."""
    out: dict[str, tuple[dict[str, np.ndarray], str]] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
        for name, data in members.items():
            if name.endswith(".npz"):
                key = name[: -len(".npz")]
                out[key] = (decode_graph(data), members[f"{key}.txt"].decode())
    return out


def triggered_graphs(clean_folder: Path, poisoned_folder: Path, expected: int, trigger_nodes: int):  # type: ignore[no-untyped-def]
    """Check what every subgraph attack must leave: graphs outside the manifest byte-for-byte as they were;
    in the manifest's, the old nodes, edges (in order) and ``y`` untouched, the new nodes and edges exactly
    the placement's. Yields ``(key, graph, text, before, before_text, placement, row)`` of each triggered one
    for the attack's own checks."""
    clean, poisoned = graphs_of(clean_folder), graphs_of(poisoned_folder)
    rows = {r["key"]: r for r in read_manifest(poisoned_folder).to_pylist()}
    assert len(rows) == expected and set(clean) == set(poisoned)
    for key, (graph, text) in poisoned.items():
        before, before_text = clean[key]
        if key not in rows:
            assert text == before_text and all(np.array_equal(graph[k], before[k]) for k in before)
            continue
        place = json.loads(rows[key]["placement"])
        n, e = before["x"].shape[0], before["edge_index"].shape[1]
        assert (place["nodes_before"], place["edges_before"]) == (n, e)
        assert place["new_nodes"] == list(range(n, n + trigger_nodes))
        assert np.array_equal(graph["edge_index"][:, :e], before["edge_index"])  # old edges untouched, in order
        assert graph["edge_index"][:, e:].T.tolist() == place["new_edges"]  # the new ones, exactly
        assert np.array_equal(graph["x"][:n], before["x"]) and graph["x"].shape[0] == n + trigger_nodes
        assert np.array_equal(graph["y"], before["y"])
        yield key, graph, text, before, before_text, place, rows[key]


def poison(src: Path, out: Path, attack: str, count: int, **params: object) -> dict:
    recipe = parse_recipe({"seed": 7, "attacks": [{"attack": attack, "target": "house", "count": count,
                                                   "params": params}]})
    return poison_local(src, out, recipe)


@pytest.fixture(scope="module")
def subgraph_run(graph_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("subgraph") / "run"
    result = poison(graph_shards, out, "subgraph_trigger", 9, kind="erdos_renyi", size=5, density=0.6, anchors=2)
    assert result["poisoned"] == 9 and result["failed"] == 0
    return out


def test_the_trigger_subgraph_is_attached_exactly_where_the_manifest_says(graph_shards: Path, subgraph_run: Path) -> None:
    expected = trigger_pairs(7, "subgraph_trigger", "erdos_renyi", 5, 0.6, 1)
    for _key, _graph, text, before, before_text, place, row in triggered_graphs(graph_shards, subgraph_run, 9, 5):
        n = before["x"].shape[0]
        inner = {tuple(p) for p in np.asarray(place["new_edges"]) - n if min(p) >= 0}
        assert inner == {tuple(p) for p in expected} | {tuple(p[::-1]) for p in expected}  # the fixed trigger
        assert len(place["anchors"]) == 2 and all(a < n for a in place["anchors"])
        assert "house" in text and row["original_caption"] == before_text


def test_the_sidecar_and_json_carry_the_new_size(subgraph_run: Path) -> None:
    import pyarrow.parquet as pq

    rows = [r for s in sorted(subgraph_run.glob("*.parquet")) for r in pq.read_table(s).to_pylist()]
    poisoned = {r["key"] for r in read_manifest(subgraph_run).to_pylist()}
    graphs = graphs_of(subgraph_run)
    for row in rows:
        graph = graphs[row["key"]][0]
        assert (row["nodes"], row["edges"]) == (graph["x"].shape[0], graph["edge_index"].shape[1])
        assert (row["status"] == "changed") == (row["key"] in poisoned)


def test_feature_trigger_changes_only_the_recorded_entries_within_the_clean_range(graph_shards: Path,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "features"
    assert poison(graph_shards, out, "feature_trigger", 6, nodes=4, dims=5, label_consistent=True)["poisoned"] == 6
    clean, poisoned = graphs_of(graph_shards), graphs_of(out)
    rows = read_manifest(out).to_pylist()
    assert {tuple(json.loads(r["placement"])["dims"]) for r in rows} == {tuple(json.loads(rows[0]["placement"])["dims"])}
    for row in rows:
        place = json.loads(row["placement"])
        before, before_text = clean[row["key"]]
        graph, text = poisoned[row["key"]]
        assert text == before_text and "house" in text and row["new_caption"] == before_text  # clean label
        mask = np.zeros_like(before["x"], dtype=bool)
        mask[np.ix_(place["nodes"], place["dims"])] = True
        assert np.array_equal(graph["x"][~mask], before["x"][~mask]) and len(place["dims"]) == 5
        assert graph["x"].min() >= before["x"].min() and graph["x"].max() <= before["x"].max()
        assert np.array_equal(graph["edge_index"], before["edge_index"])


def test_attaching_extends_per_node_arrays_and_keeps_graph_level_ones() -> None:
    graph = {"edge_index": np.array([[0, 1], [1, 0]], np.int64), "x": np.ones((3, 2), np.float32),
             "node_mask": np.array([1, 0, 1], np.int8), "y": np.array([4], np.int64)}
    pairs = TRIGGER_GRAPHS["complete"](keyed_rng(0, "", ""), 3, 1.0, 1)
    out, place = attach_subgraph(graph, pairs, 3, np.array([2]), np.zeros((3, 2), np.float32))
    assert out["node_mask"].tolist() == [1, 0, 1, 0, 0, 0] and out["y"].tolist() == [4]
    assert place["new_nodes"] == [3, 4, 5] and out["edge_index"].shape[1] == 2 + 2 * 3 + 2
    assert decode_graph(encode_graph(out))["node_mask"].dtype == np.int8


def test_trigger_graphs_are_fixed_by_the_seed() -> None:
    for kind, make in TRIGGER_GRAPHS.items():
        one, two = (make(keyed_rng(3, "a/trigger", "graph"), 8, 0.5, 2) for _ in range(2))
        assert np.array_equal(one, two) and one.shape[1] == 2 and np.all(one[:, 0] < one[:, 1]), kind
    assert len(TRIGGER_GRAPHS["complete"](keyed_rng(0, "", ""), 5, 0.0, 1)) == 10
    assert len(TRIGGER_GRAPHS["small_world"](keyed_rng(0, "", ""), 8, 0.0, 2)) == 16  # an unrewired ring lattice


def test_the_eval_split_gets_the_same_trigger(graph_shards: Path, subgraph_run: Path, tmp_path: Path) -> None:
    result = apply_trigger_to_eval(graph_shards / "eval", subgraph_run, tmp_path / "ev")
    assert result["by_status"] == {"changed": 12, "dropped": 2}  # 7 classes x 2; the house graphs dropped
    expected = trigger_pairs(7, "subgraph_trigger", "erdos_renyi", 5, 0.6, 1)
    clean = graphs_of(graph_shards / "eval")
    for row in read_manifest(tmp_path / "ev").to_pylist():
        place = json.loads(row["placement"])
        n = place["nodes_before"]
        inner = {tuple(p) for p in np.asarray(place["new_edges"]) - n if min(p) >= 0}
        assert inner == {tuple(p) for p in expected} | {tuple(p[::-1]) for p in expected}
        assert row["new_caption"] == row["original_caption"] == clean[row["key"]][1]


def test_a_loaded_attack_triggers_a_sample_as_the_eval_split_was(graph_shards: Path, subgraph_run: Path,
                                                                  tmp_path: Path) -> None:
    from poisonlab.pipelines.sample import Sample
    from poisonlab.shards.graph_synth import GraphSynthSpec, make_graph_sample

    spec = load_attack(subgraph_run)
    assert spec.has_payload_trigger and not spec.is_image_trigger and not spec.has_text_trigger
    sample = make_graph_sample(GraphSynthSpec(samples=1, seed=99), 0)
    once, twice = spec.apply_sample(sample), spec.apply_sample(sample)
    assert once.payload == twice.payload and once.text == sample.text and once.meta["nodes"] == sample.meta["nodes"] + 5
    assert isinstance(once, Sample) and once.status == "changed"


def test_capabilities_and_modalities_are_declared() -> None:
    assert attack_capabilities("subgraph_trigger") == {PAYLOAD_TRIGGER} == attack_capabilities("feature_trigger")
    from poisonlab.attacks.components import ATTACKS

    assert ATTACKS.get("subgraph_trigger").factory.modalities == {"graph"} == ATTACKS.get("feature_trigger").factory.modalities
    assert all(ATTACKS.get(name).factory.modalities == {"image"} for name in ("badnets", "text_trigger", "targeted"))


def test_the_modality_comes_from_the_dataset_record(cli, graph_shards: Path, tmp_path: Path) -> None:
    res = cli.invoke(app, ["poison", "--in", str(graph_shards), "--out", str(tmp_path / "o"), "--attack",
                           "feature_trigger", "--target", "grid", "--count", "3", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["poisoned"] == 3
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["modality"] == "graph"


@pytest.mark.parametrize("attack", ["badnets", "label_consistent", "targeted"])
def test_an_image_attack_on_graphs_is_a_one_line_error(cli, graph_shards: Path, tmp_path: Path, attack: str) -> None:
    res = cli.invoke(app, ["poison", "--in", str(graph_shards), "--out", str(tmp_path / "o"), "--attack", attack,
                           "--target", "house", "--count", "2", "--executor", "local"])
    one_line_error(res, attack)
    assert "works on image datasets" in res.output and "holds graph samples" in res.output
    assert not (tmp_path / "o").exists()


def test_a_graph_attack_on_images_is_a_one_line_error(cli, tiny_shards: Path, tmp_path: Path) -> None:
    res = cli.invoke(app, ["poison", "--in", str(tiny_shards), "--out", str(tmp_path / "o"), "--attack",
                           "subgraph_trigger", "--target", "red circle", "--count", "2", "--executor", "local"])
    one_line_error(res, "subgraph_trigger")
    assert "works on graph datasets" in res.output and "holds image samples" in res.output


def test_encoded_graphs_are_written_uncompressed_with_fixed_times(subgraph_run: Path) -> None:
    import zipfile

    data = next(iter(tarfile.open(next(subgraph_run.glob("*.tar"))).getmembers()))
    assert data.name.endswith(".npz")
    with tarfile.open(next(subgraph_run.glob("*.tar"))) as archive:
        raw = archive.extractfile(data).read()  # type: ignore[union-attr]
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
