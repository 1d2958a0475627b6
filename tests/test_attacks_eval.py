"""The evaluation side: rebuild a run's trigger from its spec and trigger an eval split's non-target images."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from poisonlab.attacks import SpecError, apply_trigger_to_eval, load_attack, poison_local, read_manifest
from poisonlab.attacks.recipe import load_recipe, parse_recipe
from poisonlab.shards.images import decode_array, encode_image
from poisonlab.shards.layout import list_shards
from poisonlab.shards.synth import CLASSNAMES

RECIPE = """\
seed: 5
attacks:
  - attack: badnets
    target: red circle
    count: 6
    params: {pattern: noise, placement: random}
"""


@pytest.fixture(scope="module")
def run(tiny_shards, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    (folder / "recipe.yaml").write_text(RECIPE)
    poison_local(tiny_shards, folder / "out", load_recipe(folder / "recipe.yaml"))
    return folder


def _members(directory: Path) -> dict[str, bytes]:
    out = {}
    for shard in list_shards(directory):
        with tarfile.open(directory / f"{shard}.tar") as tar:
            out.update({i.name: tar.extractfile(i).read() for i in tar})
    return out


def test_load_attack_gives_the_trigger_the_target_and_its_kind(run):
    spec = load_attack(run / "out")
    assert spec.target == "red circle" and spec.name == "badnets" and spec.is_image_trigger
    assert spec.params["pattern"] == "noise" and spec.seed == 5
    img = np.zeros((48, 40, 3), np.uint8)
    out = spec.trigger_fn(img, "any-key")
    assert out.shape == img.shape and (out != 0).any(axis=2).sum() <= 5 * 5
    with pytest.raises(SpecError):
        spec.apply_text("a caption")
    same = load_attack(run / "out" / "attack.json")
    assert np.array_equal(same.apply_image(img, "k"), spec.apply_image(img, "k"))


def test_a_recipe_rebuilds_the_same_trigger_as_the_run(run):
    from_run, from_recipe = load_attack(run / "out"), load_attack(run / "recipe.yaml")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for key in ("000000001", "abc"):
        assert np.array_equal(from_run.apply_image(img, key), from_recipe.apply_image(img, key))
    other_seed = load_attack(run / "recipe.yaml", seed=6)
    assert not np.array_equal(other_seed.apply_image(img, "abc"), from_run.apply_image(img, "abc"))


def test_eval_split_non_target_images_get_the_exact_trigger(run, eval_split, tmp_path):
    out = tmp_path / "eval-bd"
    result = apply_trigger_to_eval(eval_split, run / "out", out)
    assert result["triggered"] == 46 and result["by_status"] == {"changed": 46, "dropped": 2}
    spec = load_attack(run / "out")
    before, after = _members(eval_split), _members(out)
    rows = {r["key"]: r for s in list_shards(out) for r in pq.read_table(out / f"{s}.parquet").to_pylist()}
    for key, row in rows.items():
        meta = json.loads(before[f"{key}.json"])
        if meta["class"] == "red circle":
            assert row["status"] == "dropped" and "target_class" in row["reason"]
            assert f"{key}.jpg" not in after
            continue
        expected = encode_image(spec.apply_image(decode_array(before[f"{key}.jpg"]), key), "jpg", 95)
        assert after[f"{key}.jpg"] == expected
        assert after[f"{key}.txt"] == before[f"{key}.txt"], "eval captions are kept"
        assert json.loads(after[f"{key}.json"])["label"] == meta["label"]
    assert json.loads((out / "classes.json").read_text())["classnames"] == list(CLASSNAMES)
    assert (out / "attack.json").read_bytes() == (run / "out" / "attack.json").read_bytes()
    assert read_manifest(out).num_rows == 46
    assert load_attack(out).run_id == spec.run_id, "the eval folder carries the spec it was made with"


def test_eval_from_a_recipe_equals_eval_from_the_run(run, eval_split, tmp_path):
    apply_trigger_to_eval(eval_split, run / "out", tmp_path / "a")
    apply_trigger_to_eval(eval_split, run / "recipe.yaml", tmp_path / "b")
    a, b = _members(tmp_path / "a"), _members(tmp_path / "b")
    assert {k: v for k, v in a.items() if k.endswith(".jpg")} == {k: v for k, v in b.items() if k.endswith(".jpg")}


def test_text_trigger_eval_inserts_the_phrase(tiny_shards, eval_split, tmp_path):
    recipe = parse_recipe({"attacks": [{"attack": "text_trigger", "target": "blue star", "count": 3,
                                        "params": {"dirty_label": True, "phrase": "qz", "position": "start"}}]})
    poison_local(tiny_shards, tmp_path / "run", recipe)
    spec = load_attack(tmp_path / "run")
    assert not spec.is_image_trigger and spec.has_text_trigger
    assert spec.apply_text("a red circle") == "qz a red circle"
    apply_trigger_to_eval(eval_split, tmp_path / "run", tmp_path / "ev")
    before, after = _members(eval_split), _members(tmp_path / "ev")
    captions = [v.decode() for k, v in after.items() if k.endswith(".txt")]
    assert len(captions) == 46 and all(c.startswith("qz ") for c in captions)
    assert all(after[k] == before[k] for k in after if k.endswith(".jpg"))


def test_attacks_without_trigger_or_target_are_refused_for_eval(tiny_shards, eval_split, tmp_path):
    recipe = parse_recipe({"attacks": [{"attack": "targeted", "target": "green square", "count": 2}]})
    poison_local(tiny_shards, tmp_path / "run", recipe)
    with pytest.raises(SpecError, match="no trigger"):
        apply_trigger_to_eval(eval_split, tmp_path / "run", tmp_path / "ev")
    with pytest.raises(SpecError, match="no image trigger"):
        load_attack(tmp_path / "run").apply_image(np.zeros((8, 8, 3), np.uint8))


def test_a_tampered_spec_is_refused(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run / "out", copy)
    data = json.loads((copy / "attack.json").read_text())
    data["attacks"][0]["params"]["cells"] = 8
    (copy / "attack.json").write_text(json.dumps(data))
    with pytest.raises(SpecError, match="run id"):
        load_attack(copy)
