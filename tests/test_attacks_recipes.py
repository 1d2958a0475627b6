"""Every example recipe under recipes/attacks/ loads, validates and runs on the tiny shards."""

from __future__ import annotations

from pathlib import Path

import pytest

from poisonlab.attacks import load_recipe, poison_local, read_manifest

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "attacks").glob("*.yaml"))


def test_the_examples_are_there():
    assert {p.stem for p in RECIPES} >= {"badnets", "blended", "sig", "wanet", "label_consistent", "text_trigger",
                                        "targeted", "composed"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_example_recipe_runs(path, tiny_shards, tmp_path):
    recipe = load_recipe(path)
    result = poison_local(tiny_shards, tmp_path / "out", recipe, base_dir=path.parent)
    planned = sum(a["planned"] for a in result["attacks"].values())
    assert planned > 0 and result["poisoned"] == planned == read_manifest(tmp_path / "out").num_rows
