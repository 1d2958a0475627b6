"""The CLIP objective: an open_clip model from the model zoo, its tokenizer (cached) and ``ClipLoss``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import open_clip
import torch
from pydantic import Field

from poisonlab.models.tokens import TokenCache
from poisonlab.models.zoo import CHECKPOINT_NAME, ModelSpec, load_model, read_state_dict, save_checkpoint
from poisonlab.pipelines.registry import Params
from poisonlab.shards.images import IMAGE_EXTENSIONS
from poisonlab.training.config import TrainSettings
from poisonlab.training.image_codec import ImageCaptionCodec, ImageFormat
from poisonlab.training.objectives import OBJECTIVES, Built, LossOutput


class ClipParams(Params):
    max_logit_scale: float = Field(100.0, gt=1.0, description="cap on exp(logit_scale), applied after every step")


class ClipObjective:
    """Contrastive image-caption pretraining as open_clip_train does it (symmetric InfoNCE, learned scale)."""

    step_logs = ("logit_scale",)
    payload_extensions = IMAGE_EXTENSIONS  # capability: the shard payloads this objective trains on

    def __init__(self, params: ClipParams) -> None:
        self.max_log_scale = math.log(params.max_logit_scale)
        self.loss_fn = open_clip.ClipLoss()

    def build(self, settings: TrainSettings) -> Built:
        loaded = load_model(ModelSpec(settings.model), "cpu")
        fmt = ImageFormat.for_model(loaded.model, loaded.image_size, settings.max_pixels)
        return Built(loaded.model, ImageCaptionCodec(fmt, TokenCache(loaded.tokenizer)), loaded.arch)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        image_features, text_features, logit_scale = model(batch["images"], batch["texts"])[:3]
        return LossOutput(self.loss_fn(image_features, text_features, logit_scale), {"logit_scale": logit_scale})

    def after_step(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, self.max_log_scale)

    def save(self, built: Built, run_dir: Path, extra: dict[str, Any]) -> None:
        """``model.safetensors`` + ``model_config.json``: loadable by ``poisonlab.models`` and evaluation."""
        save_checkpoint(built.model, run_dir, built.arch, extra=extra)

    def load(self, run_dir: Path) -> dict[str, torch.Tensor]:
        return read_state_dict(Path(run_dir) / CHECKPOINT_NAME)


OBJECTIVES.register("clip", ClipParams, summary="CLIP: open_clip model, cached tokenizer, ClipLoss")(ClipObjective)
