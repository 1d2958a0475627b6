"""Every shipped federated recipe validates (aggregators, their parameters, the attack) without running."""

from __future__ import annotations

from pathlib import Path

import pytest

from poisonlab.attacks.recipe import Recipe, configure
from poisonlab.federated.recipe import FederatedRecipeError, load_federated_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("federated_*.yaml"))


def test_the_federated_recipes_are_shipped() -> None:
    assert {p.stem for p in RECIPES} >= {"federated_badnets", "federated_boost"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_federated_recipe_validates(path: Path) -> None:
    recipe = load_federated_recipe(path)
    names = {a.name for a in recipe.aggregators}
    assert {"fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_clip", "flame"} <= names
    assert any(a.inspection is not None for a in recipe.aggregators)
    assert any(a.honest_only for a in recipe.aggregators)
    assert len(recipe.malicious.clients) == 2 and recipe.partition.clients == 10
    if recipe.malicious.attack is not None:
        configure(Recipe(seed=recipe.seed, attacks=(recipe.malicious.attack,)))


def test_overrides_and_bad_values_are_one_line(tmp_path: Path) -> None:
    path = RECIPES[0]
    assert load_federated_recipe(path, {"rounds": 3, "train.lr": 0.01}).rounds == 3
    with pytest.raises(FederatedRecipeError, match="unknown parameter"):
        load_federated_recipe(path, {"aggregators": [{"name": "krum", "params": {"g": 1}}]})
    with pytest.raises(FederatedRecipeError, match="aggregator"):
        load_federated_recipe(path, {"aggregators": [{"name": "nope"}]})
    with pytest.raises(FederatedRecipeError, match="score"):
        load_federated_recipe(path, {"aggregators": [{"name": "fedavg", "inspection": {"score": "x"}}]})
