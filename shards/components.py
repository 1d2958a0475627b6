"""Components contributed by the shards layer (loaded through the ``poisonlab.components`` entry point)."""

from __future__ import annotations

from pydantic import Field

import poisonlab.shards.dataset  # noqa: F401  (registers the image modality)
import poisonlab.shards.graph_modality  # noqa: F401  (registers the graph modality and its payload check)
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import MapStage, ShardContext
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image

STAGES = get_registry("stage")


class ValidateImagesParams(Params):
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="decoded-size cap; larger images are errors")


class ValidateImages(MapStage):
    """Fully decode every image once, so corrupt or truncated bodies are quarantined with a reason."""

    name = "validate_images"

    def __init__(self, params: ValidateImagesParams) -> None:
        self.max_pixels = params.max_pixels

    def map(self, sample: Sample, ctx: ShardContext) -> Sample:
        if sample.payload is None or sample.payload_ext not in IMAGE_EXTENSIONS:
            return sample
        try:
            decode_image(sample.payload, self.max_pixels)
        except ImageError as exc:
            return sample.errored(self.name, str(exc))
        return sample


STAGES.register("validate_images", ValidateImagesParams)(ValidateImages)
