"""The poisoning flow on Prefect + Dask and the ``poison`` / ``poison-eval`` commands."""

from __future__ import annotations

import json

import pytest
from conftest import files

from poisonlab.attacks import poison_local, read_manifest
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.flows.cli import app
from poisonlab.flows.poison import poison_dataset
from poisonlab.flows.runtime import RunnerSpec

RECIPE = {"seed": 4, "attacks": [
    {"attack": "badnets", "target": "red circle", "count": 11, "params": {"placement": "random"}},
    {"attack": "wanet", "target": "blue star", "count": 5},
    {"attack": "targeted", "target": "green square", "count": 3, "params": {"augment": True}},
]}


def test_one_or_two_dask_workers_write_the_same_bytes_as_in_process(tiny_shards, tmp_path, prefect_harness):
    recipe = parse_recipe(RECIPE)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"dask{workers}"
        result = poison_dataset(tiny_shards, out, recipe, RunnerSpec(executor="prefect", workers=workers, progress=False))
        assert result["poisoned"] == 19
        outputs[workers] = files(out)
    poison_local(tiny_shards, tmp_path / "local", recipe)
    assert outputs[1] == outputs[2] == files(tmp_path / "local")


def test_poison_command_writes_the_manifest_and_the_eval_split(cli, tiny_shards, tmp_path):
    src = tmp_path / "src"
    src.symlink_to(tiny_shards, target_is_directory=True)
    out = tmp_path / "out"
    args = ["poison", "--in", str(src), "--out", str(out), "--attack", "badnets", "--count", "7", "--target",
            "red circle", "--seed", "2", "--param", "placement=top_left", "--param", "size_px=3",
            "--executor", "local", "--json", "--eval-in", str(src), "--eval-out", str(tmp_path / "ev")]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["poisoned"] == 7 and result["attacks"]["badnets"]["target"] == "red circle"
    rows = read_manifest(out).to_pylist()
    assert len(rows) == 7 and all(json.loads(r["placement"])["width"] == 3 for r in rows)
    assert result["eval"]["triggered"] > 0


def test_poison_eval_command_uses_a_run_or_a_recipe(cli, tiny_shards, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 1\nattacks:\n  - {attack: sig, target: red circle, count: 2}\n")
    res = cli.invoke(app, ["poison-eval", "--in", str(tiny_shards), "--spec", str(recipe), "--out",
                           str(tmp_path / "ev"), "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["triggered"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack", "nope", "--count", "1"], "unknown attack 'nope'"),
        (["--attack", "sig", "--count", "1", "--param", "freq=2"], "unknown parameter"),
        (["--attack", "sig", "--rate", "1.5"], "less than or equal to 1"),
        (["--attack", "sig", "--count", "100000"], "larger than the dataset"),
        (["--attack", "sig", "--count", "1", "--param", "novalue"], "NAME=VALUE"),
        (["--count", "1"], "--attack"),
    ],
)
def test_poison_command_reports_bad_input_before_work(cli, tiny_shards, tmp_path, extra, message):
    out = tmp_path / "out"
    res = cli.invoke(app, ["poison", "--in", str(tiny_shards), "--out", str(out), "--target", "red circle",
                           "--executor", "local", *extra])
    assert res.exit_code == 2 and message in res.output
    assert not out.exists()


def test_components_lists_every_attack(cli):
    res = cli.invoke(app, ["components", "attack", "--json"])
    names = {c["name"] for c in json.loads(res.output)["attack"]}
    assert names == {"badnets", "blended", "sig", "wanet", "text_trigger", "targeted", "label_consistent",
                     "optimised_patch", "subgraph_trigger", "feature_trigger", "optimised_graph_trigger"}
