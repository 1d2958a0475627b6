"""The image triggers, registered by name (registry kind ``trigger``) with typed parameters.

A trigger is configured from its parameters and then bound to ``(seed, salt)`` and, for user-supplied
patterns, the pattern image's bytes. A bound trigger is a pure function ``(image, key) -> (image,
placement)``: the key only matters for keyed-random placements. Patterns that depend on the seed (keyed
noise, the WaNet field) are fixed for the whole run, as a backdoor trigger must be.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from poisonlab.attacks import triggers as T
from poisonlab.attacks.assets import AssetRef, read_image_file
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.shards.images import decode_array

TRIGGERS = get_registry("trigger")

# 4 px on 32 px images (the calibrated 4x4 checkerboard: ASR 0.99 on the built-in data), 28 px on 224 px.
DEFAULT_PATCH_FRAC = 0.125

Placement = Literal["top_left", "top_right", "bottom_left", "bottom_right", "centre", "random"]


@dataclasses.dataclass(frozen=True)
class PatternContext:
    """What a trigger may need to make its pattern when a run is planned: the folder relative paths are
    read from, the dataset being poisoned (None when a spec is built from a recipe alone), the target."""

    base_dir: Path
    source: Path | None = None
    target: str | None = None
    seed: int = 0
    salt: str = ""


class TriggerParams(Params):
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality used when re-encoding a triggered image")


class Trigger(ABC):
    """A configured trigger; ``bind`` fixes the seed, the salt (the attack id) and any pattern image."""

    name: ClassVar[str]

    def __init__(self, params: TriggerParams) -> None:
        self.params = params
        self.seed = 0
        self.salt = ""
        self.pattern: bytes | None = None

    def bind(self, seed: int, salt: str, pattern: bytes | None = None) -> Trigger:
        bound = copy.copy(self)
        bound.__dict__ = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}  # no stale caches
        bound.seed, bound.salt, bound.pattern = int(seed), salt, pattern
        return bound

    def pattern_file(self) -> str | None:
        """Path of a user pattern image named in the parameters (embedded into the attack spec)."""
        return None

    def pattern_asset(self, context: PatternContext) -> tuple[AssetRef, bytes] | None:
        """The pattern image the run's spec carries (None: the trigger draws its own). A user file by
        default; a trigger that computes its pattern (an optimised patch) overrides this."""
        path = self.pattern_file()
        return read_image_file(path, context.base_dir) if path else None

    @abstractmethod
    def apply(self, image: np.ndarray, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        """The triggered image and where the trigger went (recorded in the manifest)."""

    def apply_in_place(self, image: Image.Image, key: str) -> dict[str, Any] | None:
        """Trigger a decoded RGB image in place, pixel for pixel as ``apply`` would; None if unsupported.

        Local triggers (a patch) need not copy the whole image three times through numpy; on 256 px
        images those copies cost as much as the JPEG decode.
        """
        return None

    def _user_pattern(self) -> np.ndarray:
        if self.pattern is None:
            raise ValueError(f"{self.name}: the pattern image was not bound (load the attack from its spec)")
        return _decoded(self.pattern)


@functools.lru_cache(maxsize=16)
def _decoded(data: bytes) -> np.ndarray:
    return decode_array(data)


def _resized(pattern: np.ndarray, height: int, width: int) -> np.ndarray:
    if pattern.shape[:2] == (height, width):
        return pattern
    return np.asarray(Image.fromarray(pattern).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


@functools.lru_cache(maxsize=64)
def _keyed_cells(seed: int, salt: str, cells: int) -> np.ndarray:
    return T.noise_cells(keyed_rng(seed, f"{salt}/pattern", "noise"), cells)


@functools.lru_cache(maxsize=64)
def _keyed_field(seed: int, salt: str, k: int) -> np.ndarray:
    return T.wanet_field(keyed_rng(seed, f"{salt}/pattern", "wanet"), k)


def _image_pattern_rule(pattern: str, image: str | None) -> None:
    if (pattern == "image") != (image is not None):
        raise ValueError("pattern='image' needs image=PATH, and image=PATH needs pattern='image'")


# --- badnets ---------------------------------------------------------------------------------------


class BadNetsTriggerParams(TriggerParams):
    pattern: Literal["checkerboard", "noise", "solid", "image"] = Field(
        "checkerboard", description="checkerboard, keyed noise, solid colour, or a user image file"
    )
    size_frac: float | None = Field(
        None, gt=0, le=1, description=f"patch side as a fraction of the shorter image side (default {DEFAULT_PATCH_FRAC})"
    )
    size_px: int | None = Field(None, ge=1, description="patch side in pixels (instead of size_frac)")
    cells: int = Field(4, ge=1, le=256, description="checkerboard/noise cells per patch side")
    colour: tuple[int, int, int] = Field((255, 255, 255), description="RGB of the solid patch")
    image: str | None = Field(None, description="pattern image file (pattern=image)")
    placement: Placement = Field("bottom_right", description="a corner, centre, or keyed-random per sample")

    @model_validator(mode="after")
    def _consistent(self) -> BadNetsTriggerParams:
        _image_pattern_rule(self.pattern, self.image)
        if self.size_px is not None and self.size_frac is not None:
            raise ValueError("give size_px or size_frac, not both")
        if any(not 0 <= c <= 255 for c in self.colour):
            raise ValueError(f"colour {self.colour} must be RGB values in 0..255")
        return self


class BadNetsTrigger(Trigger):
    """BadNets (Gu et al.): an opaque patch at a fixed corner/centre or a keyed-random place."""

    name = "badnets"
    params: BadNetsTriggerParams

    def pattern_file(self) -> str | None:
        return self.params.image

    def _patch(self, side: int) -> np.ndarray:
        """The square patch of this side (cached: every image of a size gets the same patch)."""
        cache = self.__dict__.setdefault("_patches", {})
        if side not in cache:
            cache[side] = self._draw_patch(side)
            cache[side].flags.writeable = False
        return cache[side]

    def _patch_image(self, side: int) -> Image.Image:
        cache = self.__dict__.setdefault("_patch_images", {})
        if side not in cache:
            cache[side] = Image.fromarray(self._patch(side))
        return cache[side]

    def _draw_patch(self, side: int) -> np.ndarray:
        p = self.params
        if p.pattern == "image":
            return _resized(self._user_pattern(), side, side)
        cells = {
            "checkerboard": lambda: T.checkerboard_cells(p.cells),
            "noise": lambda: _keyed_cells(self.seed, self.salt, p.cells),
            "solid": lambda: T.solid_cells(p.colour),
        }[p.pattern]()
        return T.cell_grid(cells, side, side)

    def _box(self, height: int, width: int, key: str) -> tuple[int, int, int]:
        side = T.patch_size(height, width, self.params.size_px, self.params.size_frac or DEFAULT_PATCH_FRAC)
        if self.params.placement == "random":
            y, x = T.random_origin(keyed_rng(self.seed, f"{self.salt}/placement", key), height, width, side)
        else:
            y, x = T.corner_origin(height, width, side, self.params.placement)
        return y, x, side

    def _placement(self, y: int, x: int, side: int) -> dict[str, Any]:
        return {"where": self.params.placement, "x": x, "y": y, "width": side, "height": side}

    def apply(self, image: np.ndarray, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = T.as_image(image).shape[:2]
        y, x, side = self._box(h, w, key)
        return T.paste_patch(image, self._patch(side), y, x), self._placement(y, x, side)

    def apply_in_place(self, image: Image.Image, key: str) -> dict[str, Any] | None:
        if image.mode != "RGB":
            return None
        y, x, side = self._box(image.height, image.width, key)
        image.paste(self._patch_image(side), (x, y))
        return self._placement(y, x, side)


# --- blended ---------------------------------------------------------------------------------------


class BlendedTriggerParams(TriggerParams):
    alpha: float = Field(0.2, gt=0, le=1, description="weight of the pattern in the blend")
    pattern: Literal["noise", "image"] = Field("noise", description="keyed noise or a user image file")
    cells: int = Field(32, ge=1, le=1024, description="resolution of the noise pattern (stretched to the image)")
    image: str | None = Field(None, description="pattern image file (pattern=image), resized to each image")

    @model_validator(mode="after")
    def _consistent(self) -> BlendedTriggerParams:
        _image_pattern_rule(self.pattern, self.image)
        return self


class BlendedTrigger(Trigger):
    """Blended (Chen et al.): mix a full-image pattern into the image at weight ``alpha``."""

    name = "blended"
    params: BlendedTriggerParams

    def pattern_file(self) -> str | None:
        return self.params.image

    def full_pattern(self, height: int, width: int) -> np.ndarray:
        if self.params.pattern == "image":
            return _resized(self._user_pattern(), height, width)
        return T.cell_grid(_keyed_cells(self.seed, self.salt, self.params.cells), height, width)

    def apply(self, image: np.ndarray, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = T.as_image(image).shape[:2]
        out = T.blend(image, self.full_pattern(h, w), self.params.alpha)
        return out, {"where": "full", "alpha": self.params.alpha}


# --- sig -------------------------------------------------------------------------------------------


class SigTriggerParams(TriggerParams):
    amplitude: float = Field(60 / 255, gt=0, le=1, description="signal amplitude as a fraction of 255")
    frequency: float = Field(6.0, gt=0, description="periods across the image width")


class SigTrigger(Trigger):
    """SIG (Barni et al.): a horizontal sinusoid added to the whole image."""

    name = "sig"
    params: SigTriggerParams

    def apply(self, image: np.ndarray, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        out = T.add_signal(image, self.params.amplitude, self.params.frequency)
        return out, {"where": "full", "amplitude": self.params.amplitude, "frequency": self.params.frequency}


# --- wanet -----------------------------------------------------------------------------------------


class WaNetTriggerParams(TriggerParams):
    k: int = Field(4, ge=2, le=64, description="control grid size")
    s: float = Field(0.5, gt=0, le=64, description="warping strength")
    grid_rescale: float = Field(1.0, gt=0, le=1, description="WaNet's grid rescale (1 keeps borders)")


class WaNetTrigger(Trigger):
    """WaNet (Nguyen & Tran): an invisible warp along a control field fixed by the seed."""

    name = "wanet"
    params: WaNetTriggerParams

    def apply(self, image: np.ndarray, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        field = _keyed_field(self.seed, self.salt, self.params.k)
        out = T.warp(image, field, self.params.s, self.params.grid_rescale)
        return out, {"where": "full", "k": self.params.k, "s": self.params.s}


TRIGGERS.register("badnets", BadNetsTriggerParams)(BadNetsTrigger)
TRIGGERS.register("blended", BlendedTriggerParams)(BlendedTrigger)
TRIGGERS.register("sig", SigTriggerParams)(SigTrigger)
TRIGGERS.register("wanet", WaNetTriggerParams)(WaNetTrigger)
