"""The ``optimised_patch`` trigger: a BadNets-style patch whose pixels are optimised on a surrogate model.

The optimisation (``attacks.patch_optimiser``) runs once, when the run is planned, on images of the dataset
being poisoned; the patch is then an asset of the attack spec like a user's pattern image, so every worker
and every evaluation pastes exactly the same pixels, and nothing is optimised again at evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from poisonlab.attacks import triggers as T
from poisonlab.attacks.assets import AssetError, AssetRef, checked_image
from poisonlab.attacks.captions import TargetPrompts
from poisonlab.attacks.image_triggers import (
    DEFAULT_PATCH_FRAC,
    TRIGGERS,
    BadNetsTrigger,
    PatternContext,
    TriggerParams,
    _resized,
)

FixedPlacement = Literal["top_left", "top_right", "bottom_left", "bottom_right", "centre"]
PROMPTS = ("a photo of a {}.", "{}", "an image of a {}.", "a picture of a {}.")


class OptimisedPatchTriggerParams(TriggerParams):
    surrogate: str = Field(..., description="the surrogate model: a poisonlab run folder or an open_clip local-dir "
                           "folder (relative to the recipe's folder or the working directory)")
    size_frac: float | None = Field(None, gt=0, le=1, description=f"patch side as a fraction of the shorter image "
                                    f"side (default {DEFAULT_PATCH_FRAC})")
    size_px: int | None = Field(None, ge=1, description="patch side in pixels (instead of size_frac)")
    placement: FixedPlacement = Field("bottom_right", description="a corner or the centre (the patch is optimised "
                                      "for one place)")
    steps: int = Field(200, ge=1, le=100_000, description="Adam steps")
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the patch's logits")
    images: int = Field(256, ge=1, le=65_536, description="dataset images the patch is optimised over")
    smoothness: float = Field(0.0, ge=0, description="weight of total variation (higher: a smoother, less "
                              "visible patch)")
    prompts: TargetPrompts = Field(PROMPTS, min_length=1, description="prompts naming the target, each with '{}'")


class OptimisedPatchTrigger(BadNetsTrigger):
    """A patch at a fixed place whose pixels come from the run's spec (optimised when the run was planned)."""

    name = "optimised_patch"
    params: OptimisedPatchTriggerParams  # type: ignore[assignment]

    def pattern_file(self) -> str | None:
        return None

    def _draw_patch(self, side: int) -> np.ndarray:
        return _resized(self._user_pattern(), side, side)

    def pattern_asset(self, context: PatternContext) -> tuple[AssetRef, bytes] | None:
        from poisonlab.attacks.patch_optimiser import PatchProblem, make_patch, png_bytes

        if context.source is None or not context.target:
            raise AssetError("optimised_patch optimises its patch on the dataset it poisons, for its target: build "
                             "its spec with `poisonlab poison`, then use that folder's attack.json")
        surrogate = Path(self.params.surrogate)
        surrogate = surrogate if surrogate.is_absolute() else Path(context.base_dir) / surrogate
        p = self.params

        def problem(size: int) -> PatchProblem:
            side = T.patch_size(size, size, p.size_px, p.size_frac or DEFAULT_PATCH_FRAC)
            y, x = T.corner_origin(size, size, side, p.placement)
            return PatchProblem(side=side, y=y, x=x, steps=p.steps, lr=p.lr, smoothness=p.smoothness)

        patch, _ = make_patch(surrogate, Path(context.source), context.target, p.prompts, p.images, problem,
                              context.seed, context.salt)
        data = png_bytes(patch)
        return checked_image(data, "optimised patch"), data


TRIGGERS.register("optimised_patch", OptimisedPatchTriggerParams)(OptimisedPatchTrigger)
