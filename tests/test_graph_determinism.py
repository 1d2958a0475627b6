"""Generated graphs and their poisoned copies are byte-identical in this process and on 2 Dask workers
(the fixtures and the comparison of ``test_flows_determinism``/``test_attacks_flow``, for graphs)."""

from __future__ import annotations

from pathlib import Path

from conftest import files

from poisonlab.attacks import poison_local
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.flows.datasets import synth_graph_dataset
from poisonlab.flows.poison import poison_dataset
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.shards.graph_synth import GraphSynthSpec

SPEC = GraphSynthSpec(samples=90, seed=13, samples_per_shard=20)
RECIPE = {"seed": 5, "attacks": [
    {"attack": "subgraph_trigger", "target": "wheel", "count": 7, "params": {"kind": "small_world", "size": 6,
                                                                           "neighbours": 2, "density": 0.3}},
    {"attack": "feature_trigger", "target": "grid", "count": 5, "params": {"dims": 4}},
]}


def test_local_and_two_dask_workers_write_the_same_graphs_and_manifest(prefect_harness, tmp_path: Path) -> None:
    local, dask = RunnerSpec(executor="local", progress=False), RunnerSpec(executor="prefect", workers=2,
                                                                           progress=False)
    synth_graph_dataset(tmp_path / "local", SPEC, 1, local)
    synth_graph_dataset(tmp_path / "dask", SPEC, 1, dask)
    assert files(tmp_path / "local") == files(tmp_path / "dask")
    recipe = parse_recipe(RECIPE)
    assert poison_local(tmp_path / "local", tmp_path / "p-local", recipe)["poisoned"] == 12
    assert poison_dataset(tmp_path / "local", tmp_path / "p-dask", recipe, dask)["poisoned"] == 12
    poisoned = files(tmp_path / "p-local")
    assert poisoned == files(tmp_path / "p-dask") and "_run/manifest.parquet" in poisoned
