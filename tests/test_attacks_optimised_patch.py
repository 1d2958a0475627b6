"""``optimised_patch`` (BadCLIP-style): a patch optimised on a surrogate model when the run is planned, carried
by the spec as an asset, and pasted exactly where its parameters say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from poisonlab.attacks import load_attack, poison_local
from poisonlab.attacks.assets import AssetError
from poisonlab.attacks.patch_optimiser import PatchProblem, optimise_patch, sample_images, target_direction
from poisonlab.attacks.recipe import configure, parse_recipe
from poisonlab.models.zoo import ModelSpec, load_model, save_checkpoint
from poisonlab.pipelines.registry import RegistryError
from poisonlab.shards.images import decode_array

ARCH = "poisonlab-tiny-32"
FAST = {"steps": 15, "images": 32, "lr": 0.2}


@pytest.fixture(scope="module")
def surrogate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a randomly initialised tiny CLIP (any model poisonlab loads can be the surrogate)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("surrogate")
    save_checkpoint(load_model(ModelSpec(ARCH)).model, out, ARCH)
    return out


def _recipe(surrogate: Path, **params: object) -> dict:
    return {"seed": 3, "attacks": [{"attack": "optimised_patch", "target": "red circle", "count": 6,
                                    "params": {"surrogate": str(surrogate), **FAST, **params}}]}


def test_optimising_moves_triggered_images_toward_the_target_and_is_deterministic(surrogate: Path,
                                                                                  tiny_shards: Path) -> None:
    loaded = load_model(ModelSpec.from_run(surrogate))
    images = sample_images(tiny_shards, 32, loaded.image_size, seed=1, salt="a")
    assert images.shape == (32, 32, 32, 3)
    direction = target_direction(loaded.model, loaded.tokenizer, "red circle", ("a photo of a {}.",))
    problem = PatchProblem(side=8, y=24, x=24, steps=25, lr=0.2, smoothness=0.0)
    args = (loaded.model, images, direction, problem, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    patch, losses = optimise_patch(*args, seed=1, salt="a")
    assert patch.shape == (8, 8, 3) and patch.dtype == np.uint8
    assert losses[-1] < losses[0] - 0.01  # triggered images are closer to the target's text than at the start
    again, _ = optimise_patch(*args, seed=1, salt="a")
    assert np.array_equal(patch, again)
    other, _ = optimise_patch(*args, seed=2, salt="a")
    assert not np.array_equal(patch, other)
    assert all(not p.requires_grad or p.grad is None for p in loaded.model.parameters())  # weights untouched


def test_the_patch_is_applied_where_its_parameters_say(surrogate: Path, tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "poisoned"
    assert poison_local(tiny_shards, out, parse_recipe(_recipe(surrogate, size_px=6, placement="top_left")))[
        "poisoned"] == 6
    spec = load_attack(out)
    assert spec.record.pattern is not None  # the optimised patch travels with the spec, as an asset
    assert (out / spec.record.pattern.relpath).is_file()
    patch = decode_array((out / spec.record.pattern.relpath).read_bytes())
    assert patch.shape == (6, 6, 3)  # optimised at the surrogate's input size (32 px), as the data are
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    triggered = spec.apply_image(image, "any-key")
    assert np.array_equal(triggered[:6, :6], patch)  # exactly the spec's pixels, top left, 6 px
    outside = np.ones((32, 32), dtype=bool)
    outside[:6, :6] = False
    assert np.array_equal(triggered[outside], image[outside])  # nothing else changed
    rows = pq.read_table(out / "_run" / "manifest.parquet").to_pylist()
    assert len(rows) == 6 and all('"x": 0' in r["placement"] and '"width": 6' in r["placement"] for r in rows)


def test_the_same_seed_gives_the_same_patch_bytes(surrogate: Path, tiny_shards: Path, tmp_path: Path) -> None:
    refs = []
    for name in ("a", "b"):
        poison_local(tiny_shards, tmp_path / name, parse_recipe(_recipe(surrogate)))
        refs.append(load_attack(tmp_path / name).record.pattern)
    assert refs[0] == refs[1]


def test_a_spec_from_a_recipe_alone_cannot_optimise(surrogate: Path, tmp_path: Path) -> None:
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(surrogate)))
    with pytest.raises(AssetError, match="optimises its patch on the dataset"):
        load_attack(recipe)


@pytest.mark.parametrize(("params", "message"), [
    ({"surrogate": "s", "prompts": ["no slot"]}, "exactly once"),
    ({"surrogate": "s", "placement": "random"}, "placement"),
    ({"prompts": ["{}"]}, "surrogate"),
])
def test_bad_parameters_are_refused(params: dict, message: str) -> None:
    recipe = parse_recipe({"attacks": [{"attack": "optimised_patch", "target": "x", "count": 1, "params": params}]})
    with pytest.raises(RegistryError, match=message):
        configure(recipe)
