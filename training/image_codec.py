"""Image-caption samples as CLIP input: open_clip's eval transform and a caching tokenizer.

The codec is what a DataLoader worker holds (it is pickled or forked into the worker, never the model):
``decode`` turns one ``Sample`` into arrays with the shared pixel cap (nothing is unpickled), ``collate``
stacks a list of them into the tensors the objective's ``loss`` reads.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from poisonlab.models.pixels import byte_table, normalised
from poisonlab.models.tokens import TokenCache
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from poisonlab.training.objectives import SkipSample


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """How images become model input: open_clip's eval transform (shortest side, centre crop, normalise)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def for_model(cls, model: torch.nn.Module, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFormat:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        return cls(size=size, mean=mean, std=std, max_pixels=max_pixels)  # type: ignore[arg-type]

    def fit(self, image: Image.Image) -> np.ndarray:
        """torchvision's ``Resize(size)`` (shortest side, bicubic) then ``CenterCrop``, as open_clip evaluates."""
        w, h = image.size
        if (w, h) != (self.size, self.size):
            short, long = min(w, h), max(w, h)
            if short != self.size:
                new_long = int(self.size * long / short)
                nw, nh = (self.size, new_long) if w <= h else (new_long, self.size)
                image = image.resize((nw, nh), Image.Resampling.BICUBIC)
                w, h = nw, nh
            left, top = int(round((w - self.size) / 2.0)), int(round((h - self.size) / 2.0))
            image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def fit_array(self, array: np.ndarray) -> np.ndarray:
        if array.shape[:2] == (self.size, self.size):
            return array
        return self.fit(Image.fromarray(array))

    def decode(self, data: bytes) -> np.ndarray:
        return self.fit(decode_image(data, self.max_pixels))

    @functools.cached_property
    def _table(self) -> np.ndarray:
        return byte_table(self.mean, self.std, torch.float32)

    def to_tensor(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 HxWx3 arrays into a normalised float32 NCHW batch (``models/pixels.py``: by table lookup,
        the floats of ``to_tensor`` then ``Normalize``)."""
        return normalised(np.stack(arrays), self._table)


@dataclasses.dataclass
class ImageCaptionCodec:
    """Decode an image-caption ``Sample`` (any registered image format) and collate CLIP batches."""

    fmt: ImageFormat
    tokens: TokenCache

    def decode(self, sample: Sample) -> tuple[np.ndarray, str]:
        if sample.payload is None:
            raise SkipSample("missing_payload")
        if sample.text is None:
            raise SkipSample("missing_caption")
        try:
            return self.fmt.decode(sample.payload), sample.text
        except ImageError as exc:
            raise SkipSample(str(exc).split(":")[0]) from None

    def collate(self, items: Sequence[tuple[np.ndarray, str]]) -> dict[str, torch.Tensor]:
        return {"images": self.fmt.to_tensor([image for image, _ in items]),
                "texts": self.tokens([text for _, text in items])}
