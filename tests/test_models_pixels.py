"""The batched model input equals open_clip's per-image preprocessing bit for bit, or is not used."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from poisonlab.models.pixels import batch_pixels, fast_pixels


def _images(size: int, count: int, mode: str = "RGB", seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode) for _ in range(count)]


@pytest.mark.parametrize(("size", "count"), [(32, 9), (64, 9), (32, 200), (224, 3)])
def test_the_batched_input_is_the_per_image_input_bit_for_bit(size: int, count: int) -> None:
    """Every byte value of every channel occurs; 200 images at 32 px and 3 at 224 px span several blocks."""
    preprocess = open_clip.image_transform(size, is_train=False)
    fast = fast_pixels(preprocess, size)
    assert fast is not None
    images = _images(size, count)
    assert all(len(np.unique(np.stack(images)[..., c])) == 256 for c in range(3))
    batched = batch_pixels(images, preprocess, fast)
    expected = torch.stack([preprocess(im) for im in images])
    assert batched.dtype == expected.dtype and batched.shape == expected.shape
    assert torch.equal(batched, expected)
    staged = fast.image_bytes(images, pin=False)  # the accelerator's path, its lookup run here on the CPU
    assert staged.stacked.dtype == torch.uint8 and staged.stacked.nbytes * 4 == expected.nbytes
    assert torch.equal(staged.to("cpu"), expected)


def test_images_of_another_size_or_mode_take_the_models_own_path() -> None:
    preprocess = open_clip.image_transform(32, is_train=False)
    fast = fast_pixels(preprocess, 32)
    assert fast is not None
    for images in (_images(32, 3) + _images(40, 1), _images(32, 2, mode="L")):
        expected = torch.stack([preprocess(im) for im in images])
        assert not all(fast.accepts(im) for im in images)
        assert torch.equal(batch_pixels(images, preprocess, fast), expected)


def test_an_unknown_or_mismatched_transform_has_no_batched_path() -> None:
    known = open_clip.image_transform(32, is_train=False)
    assert fast_pixels(known, 64) is None  # its resize and crop are not identities at 64 px
    flipped = T.Compose([T.RandomHorizontalFlip(), *known.transforms])
    assert fast_pixels(flipped, 32) is None
    assert fast_pixels(lambda im: im, 32) is None
    no_norm = T.Compose(known.transforms[:-1])
    assert fast_pixels(no_norm, 32) is None
