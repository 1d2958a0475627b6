"""Image triggers as pure functions of arrays: no I/O, no global state, no torch.

Every function takes an ``HxWx3 uint8`` array (and explicit parameters) and returns a new array of the
same shape, so a trigger is reproducible from its parameters alone: the poisoning stage, the evaluation
split and a trainer's on-the-fly check all call the same code. Randomness (noise patterns, the WaNet
field, keyed placements) is drawn by the callers from keyed generators and passed in.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right", "centre"]


def as_image(array: np.ndarray) -> np.ndarray:
    """Check the trigger input contract (HxWx3 uint8) so a wrong array fails loudly, not subtly."""
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {array.shape} dtype {array.dtype}")
    return array


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round half away from zero and clip: the one quantisation rule every trigger uses."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


# --- patterns --------------------------------------------------------------------------------------


def cell_grid(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Stretch a ``cxcx3`` grid of colours over ``height x width`` pixels with nearest-neighbour cells.

    Cells keep hard edges at any size, so the same pattern is a 1-pixel checkerboard on a 32 px image
    and a 7-pixel one on a 224 px image.
    """
    rows = (np.arange(height) * cells.shape[0]) // max(1, height)
    cols = (np.arange(width) * cells.shape[1]) // max(1, width)
    return cells[rows[:, None], cols[None, :]]


def checkerboard_cells(cells: int, low: int = 0, high: int = 255) -> np.ndarray:
    """A ``cells x cells`` checkerboard starting with ``high`` in the top-left cell."""
    parity = (np.arange(cells)[:, None] + np.arange(cells)[None, :]) % 2 == 0
    grid = np.where(parity, high, low).astype(np.uint8)
    return np.repeat(grid[:, :, None], 3, axis=2)


def noise_cells(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Uniform random colours on a ``cells x cells`` grid (draw ``rng`` from a keyed generator)."""
    return rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)


def solid_cells(colour: tuple[int, int, int]) -> np.ndarray:
    return np.array(colour, dtype=np.uint8).reshape(1, 1, 3)


# --- placement -------------------------------------------------------------------------------------


def patch_size(height: int, width: int, size_px: int | None, size_frac: float) -> int:
    """Side of a square patch: pixels when given, else a fraction of the shorter side (at least 1)."""
    side = size_px if size_px is not None else int(math.floor(size_frac * min(height, width) + 0.5))
    return max(1, min(side, height, width))


def corner_origin(height: int, width: int, size: int, where: Corner) -> tuple[int, int]:
    """Top-left (y, x) of a ``size`` patch at a fixed place."""
    bottom, right = height - size, width - size
    origins = {
        "top_left": (0, 0),
        "top_right": (0, right),
        "bottom_left": (bottom, 0),
        "bottom_right": (bottom, right),
        "centre": (bottom // 2, right // 2),
    }
    return origins[where]


def random_origin(rng: np.random.Generator, height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left (y, x) drawn uniformly so the patch lies fully inside the image."""
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


# --- triggers --------------------------------------------------------------------------------------


def paste_patch(image: np.ndarray, patch: np.ndarray, y: int, x: int) -> np.ndarray:
    """BadNets: replace the pixels under ``patch`` (opaque), leave every other pixel as it was."""
    image = as_image(image)
    h, w = patch.shape[:2]
    if y < 0 or x < 0 or y + h > image.shape[0] or x + w > image.shape[1]:
        raise ValueError(f"patch {h}x{w} at ({y}, {x}) does not fit a {image.shape[0]}x{image.shape[1]} image")
    out = image.copy()
    out[y : y + h, x : x + w] = patch
    return out


def blend(image: np.ndarray, pattern: np.ndarray, alpha: float) -> np.ndarray:
    """Blended (Chen et al.): ``(1 - alpha) * image + alpha * pattern`` over the whole image."""
    image = as_image(image)
    if pattern.shape != image.shape:
        raise ValueError(f"pattern shape {pattern.shape} differs from image shape {image.shape}")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * pattern.astype(np.float32)
    return to_uint8(mixed)


def sig_signal(width: int, amplitude: float, frequency: float) -> np.ndarray:
    """SIG (Barni et al.): ``amplitude * 255 * sin(2 pi j f / width)`` for column ``j`` (a horizontal signal)."""
    columns = np.arange(width, dtype=np.float64)
    return amplitude * 255.0 * np.sin(2.0 * math.pi * columns * frequency / width)


def add_signal(image: np.ndarray, amplitude: float, frequency: float) -> np.ndarray:
    """Add the SIG signal to every row and channel, clipping at the valid range."""
    image = as_image(image)
    signal = sig_signal(image.shape[1], amplitude, frequency)
    return to_uint8(image.astype(np.float64) + signal[None, :, None])


def wanet_field(rng: np.random.Generator, k: int) -> np.ndarray:
    """WaNet's control field: ``2 x k x k`` uniform in [-1, 1], normalised to mean absolute value 1."""
    field = rng.uniform(-1.0, 1.0, size=(2, k, k))
    return field / np.mean(np.abs(field))


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution weights for the 4 taps around a sample (PyTorch's a = -0.75)."""

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``size_out x size_in`` matrix of bicubic upsampling with ``align_corners=True`` and clamped borders."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    src = np.arange(size_out, dtype=np.float64) * scale
    base = np.floor(src).astype(np.int64)
    weights = _cubic_weights(src - base)
    matrix = np.zeros((size_out, size_in), dtype=np.float64)
    for tap in range(4):
        idx = np.clip(base - 1 + tap, 0, size_in - 1)
        np.add.at(matrix, (np.arange(size_out), idx), weights[:, tap])
    return matrix


def wanet_grid(field: np.ndarray, height: int, width: int, s: float, grid_rescale: float = 1.0) -> np.ndarray:
    """The sampling grid ``H x W x 2`` (x, y in [-1, 1]) of WaNet for an image of this size.

    The control field is upsampled bicubically to the image, scaled by ``s`` and divided by the image
    side (WaNet divides by the height of its square images; here each axis by its own length, so the
    displacement in pixels is the same along both axes of a non-square image).
    """
    rows, cols = bicubic_matrix(field.shape[1], height), bicubic_matrix(field.shape[2], width)
    flow = np.stack([rows @ field[c] @ cols.T for c in range(2)], axis=-1)  # H x W x (dx, dy)
    identity = np.stack(np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height)), axis=-1)
    grid = (identity + s * flow / np.array([width, height], dtype=np.float64)) * grid_rescale
    return np.clip(grid, -1.0, 1.0)


def grid_sample_bilinear(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear sampling at normalised coordinates (``align_corners=True``), as ``F.grid_sample`` does."""
    image = as_image(image)
    height, width = image.shape[:2]
    px = (grid[..., 0] + 1.0) * 0.5 * (width - 1)
    py = (grid[..., 1] + 1.0) * 0.5 * (height - 1)
    x0 = np.clip(np.floor(px).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(py).astype(np.int64), 0, height - 1)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = (px - x0)[..., None], (py - y0)[..., None]
    src = image.astype(np.float32)
    top = src[y0, x0] * (1 - wx) + src[y0, x1] * wx
    bottom = src[y1, x0] * (1 - wx) + src[y1, x1] * wx
    return to_uint8(top * (1 - wy) + bottom * wy)


def warp(image: np.ndarray, field: np.ndarray, s: float, grid_rescale: float = 1.0) -> np.ndarray:
    """WaNet (Nguyen & Tran 2021): warp the image along the fixed field; invisible at small ``s``."""
    image = as_image(image)
    return grid_sample_bilinear(image, wanet_grid(field, image.shape[0], image.shape[1], s, grid_rescale))
