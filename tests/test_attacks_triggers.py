"""Each trigger on small images: where the parameters say, with the stated strength, nothing else changed."""

from __future__ import annotations

import numpy as np
import pytest

from poisonlab.attacks import triggers as T
from poisonlab.attacks.image_triggers import TRIGGERS
from poisonlab.pipelines.registry import RegistryError


def _image(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    # mid-range values so additive triggers are not clipped unless the test wants it
    return np.random.default_rng(seed).integers(60, 196, size=(h, w, 3), dtype=np.uint8)


def _trigger(name: str, seed: int = 0, salt: str = "t", pattern_bytes: bytes | None = None, **params):
    return TRIGGERS.create(name, params).bind(seed, salt, pattern_bytes)


def _changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


# --- badnets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "placement, origin",
    [("top_left", (0, 0)), ("top_right", (0, 28)), ("bottom_left", (28, 0)), ("bottom_right", (28, 28)),
     ("centre", (14, 14))],
)
def test_badnets_default_is_a_4px_checkerboard_at_the_placement(placement, origin):
    img = _image()
    out, where = _trigger("badnets", placement=placement).apply(img, "k")
    y, x = origin
    assert (where["y"], where["x"], where["width"], where["height"]) == (y, x, 4, 4)
    patch = out[y : y + 4, x : x + 4, 0]
    expected = np.where((np.arange(4)[:, None] + np.arange(4)[None, :]) % 2 == 0, 255, 0)
    assert np.array_equal(patch, expected) and np.all(out[y : y + 4, x : x + 4] == patch[..., None])
    mask = np.zeros((32, 32), bool)
    mask[y : y + 4, x : x + 4] = True
    assert np.array_equal(out[~mask], img[~mask]), "pixels outside the patch must not change"


def test_badnets_size_fraction_scales_with_the_image_and_px_overrides():
    big = _image(224, 224)
    out, where = _trigger("badnets").apply(big, "k")
    assert where["width"] == 28  # 0.125 x 224
    # 4 cells per side: 7-pixel checker cells on 224 px
    assert np.all(out[196:203, 196:203] == 255) and np.all(out[196:203, 203:210] == 0)
    _, where = _trigger("badnets", size_px=10).apply(big, "k")
    assert where["width"] == 10
    _, where = _trigger("badnets", size_frac=0.5).apply(_image(40, 64), "k")
    assert where["width"] == 20  # half of the shorter side


def test_badnets_solid_noise_and_image_patterns():
    img = _image()
    out, _ = _trigger("badnets", pattern="solid", colour=(10, 20, 30), placement="top_left").apply(img, "k")
    assert np.all(out[:4, :4] == np.array([10, 20, 30], np.uint8))
    a, _ = _trigger("badnets", pattern="noise", cells=4, seed=1).apply(img, "k1")
    b, _ = _trigger("badnets", pattern="noise", cells=4, seed=1).apply(img, "k2")
    c, _ = _trigger("badnets", pattern="noise", cells=4, seed=2).apply(img, "k1")
    assert np.array_equal(a, b), "the noise pattern is fixed per seed, not per sample"
    assert not np.array_equal(a, c), "another seed draws another pattern"
    from poisonlab.shards.images import encode_image

    pattern = np.zeros((8, 8, 3), np.uint8)
    pattern[:, :, 1] = 200
    trig = _trigger("badnets", pattern="image", image="x.png", size_px=8, pattern_bytes=encode_image(pattern, "png"))
    out, where = trig.apply(img, "k")
    assert np.array_equal(out[24:, 24:], pattern) and where["width"] == 8


def test_badnets_random_placement_is_keyed():
    img = _image(64, 64)
    trig = _trigger("badnets", placement="random", size_px=6, seed=5)
    places = {k: trig.apply(img, k)[1] for k in [f"key{i}" for i in range(30)]}
    assert places["key3"] == trig.apply(img, "key3")[1], "same key, same place"
    assert len({(p["y"], p["x"]) for p in places.values()}) > 20, "different keys spread over the image"
    for key, p in places.items():
        out = trig.apply(img, key)[0]
        ys, xs = np.nonzero(_changed_mask(out, img))
        assert ys.min() >= p["y"] and ys.max() < p["y"] + 6 and xs.min() >= p["x"] and xs.max() < p["x"] + 6


def test_badnets_rejects_inconsistent_parameters():
    with pytest.raises(RegistryError):
        TRIGGERS.create("badnets", {"size_px": 4, "size_frac": 0.2})
    with pytest.raises(RegistryError):
        TRIGGERS.create("badnets", {"pattern": "image"})  # no image file
    with pytest.raises(RegistryError):
        TRIGGERS.create("badnets", {"placement": "left"})
    with pytest.raises(RegistryError):
        TRIGGERS.create("badnets", {"colour": [300, 0, 0], "pattern": "solid"})


# --- blended ---------------------------------------------------------------------------------------


def test_blended_mixes_at_alpha():
    img = _image()
    trig = _trigger("blended", alpha=0.2, seed=3)
    out, where = trig.apply(img, "k")
    pattern = trig.full_pattern(32, 32).astype(np.float64)
    expected = 0.8 * img + 0.2 * pattern
    assert np.abs(out - expected).max() <= 0.5 + 1e-6
    # the stated strength, recovered from the output alone: out - img = alpha * (pattern - img)
    diff, spread = (out.astype(float) - img).ravel(), (pattern - img).ravel()
    alpha = float(diff @ spread / (spread @ spread))
    assert alpha == pytest.approx(0.2, abs=0.005)
    assert where == {"where": "full", "alpha": 0.2}


def test_blended_noise_is_fixed_per_seed_and_stretched_to_any_size():
    a = _trigger("blended", seed=1).full_pattern(64, 64)
    assert np.array_equal(a, _trigger("blended", seed=1).full_pattern(64, 64))
    assert not np.array_equal(a, _trigger("blended", seed=2).full_pattern(64, 64))
    assert np.array_equal(a[::2, ::2], _trigger("blended", seed=1).full_pattern(32, 32))  # 32 cells on both


# --- sig -------------------------------------------------------------------------------------------


def test_sig_adds_a_horizontal_sinusoid_of_the_stated_amplitude_and_frequency():
    img = np.full((16, 48, 3), 128, np.uint8)  # period 8 px: the peaks fall on pixels
    out, _ = _trigger("sig").apply(img, "k")
    delta = out.astype(float) - img
    assert np.all(delta == delta[:1]), "the same signal on every row and channel"
    row = delta[0, :, 0]
    assert np.abs(row).max() == pytest.approx(60, abs=1)  # amplitude 60/255 of the range
    spectrum = np.abs(np.fft.rfft(row))
    assert int(np.argmax(spectrum)) == 6  # six periods across the width
    assert np.abs(row - 60 * np.sin(2 * np.pi * np.arange(48) * 6 / 48)).max() <= 0.5 + 1e-9


def test_sig_clips_at_the_valid_range():
    out, _ = _trigger("sig", amplitude=1.0, frequency=1).apply(np.full((4, 12, 3), 250, np.uint8), "k")
    assert out.max() == 255 and out.min() < 250


# --- wanet -----------------------------------------------------------------------------------------


def test_wanet_matches_the_reference_torch_implementation():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    field = T.wanet_field(rng, 4)
    assert np.mean(np.abs(field)) == pytest.approx(1.0)
    for h, w in [(32, 32), (24, 40)]:
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ins = torch.tensor(field[None], dtype=torch.float64)
        noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                                torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
        identity = torch.stack((xs, ys), 2)[None]
        grid = torch.clamp(identity + 0.5 * noise / torch.tensor([w, h], dtype=torch.float64), -1, 1)
        ref = F.grid_sample(torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None], grid, align_corners=True)
        ref = np.floor(ref[0].permute(1, 2, 0).numpy() + 0.5)
        assert np.abs(grid[0].numpy() - T.wanet_grid(field, h, w, 0.5)).max() < 1e-12
        assert np.array_equal(T.warp(img, field, 0.5), ref.astype(np.uint8))


def test_wanet_is_small_fixed_per_seed_and_grows_with_s():
    img = _image(32, 32)
    soft, _ = _trigger("wanet", seed=1).apply(img, "a")
    assert np.array_equal(soft, _trigger("wanet", seed=1).apply(img, "b")[0]), "one warp for every sample"
    assert not np.array_equal(soft, _trigger("wanet", seed=2).apply(img, "a")[0])
    hard, _ = _trigger("wanet", seed=1, s=4.0).apply(img, "a")
    err_soft = np.abs(soft.astype(float) - img).mean()
    err_hard = np.abs(hard.astype(float) - img).mean()
    assert 0 < err_soft < err_hard
    flat = np.full((32, 32, 3), 90, np.uint8)
    assert np.array_equal(_trigger("wanet", seed=1).apply(flat, "a")[0], flat), "a warp moves pixels, adds none"


def test_triggers_refuse_wrong_arrays():
    with pytest.raises(ValueError):
        _trigger("sig").apply(np.zeros((8, 8), np.uint8), "k")
    with pytest.raises(ValueError):
        _trigger("badnets").apply(np.zeros((8, 8, 3), np.float32), "k")


@pytest.mark.parametrize("params", [
    {}, {"placement": "random", "pattern": "noise", "cells": 3}, {"pattern": "solid", "size_px": 7},
    {"pattern": "image", "image": "p.png", "size_frac": 0.3, "placement": "centre"},
])
def test_badnets_in_place_fast_path_equals_the_pure_function(params):
    from PIL import Image

    from poisonlab.shards.images import encode_image

    pattern = encode_image(np.random.default_rng(1).integers(0, 256, (9, 9, 3), dtype=np.uint8), "png")
    trig = _trigger("badnets", seed=4, pattern_bytes=pattern, **params)
    for h, w in [(32, 32), (45, 70)]:
        img = _image(h, w)
        pil = Image.fromarray(img)
        where = trig.apply_in_place(pil, "key")
        expected, expected_where = trig.apply(img, "key")
        assert np.array_equal(np.asarray(pil), expected) and where == expected_where
