"""Frozen encoders: L2-normalised image and text features in batches, and the zero-shot classifier."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import open_clip
import torch

from poisonlab.training.image_codec import ImageFormat


@torch.no_grad()
def image_features(model: torch.nn.Module, fmt: ImageFormat, images: Sequence[np.ndarray], device: torch.device,
                   batch_size: int = 256) -> torch.Tensor:
    """Images (any size, uint8 HxWx3) -> unit-norm features on the CPU, in input order."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = [fmt.fit_array(a) for a in images[start:start + batch_size]]
        feats = model.encode_image(fmt.to_tensor(chunk).to(device))
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def text_features(model: torch.nn.Module, tokenizer, texts: Sequence[str], device: torch.device,  # type: ignore[no-untyped-def]
                  batch_size: int = 512) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        feats = model.encode_text(tokenizer(list(texts[start:start + batch_size])).to(device))
        out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def zero_shot_weights(model: torch.nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],  # type: ignore[no-untyped-def]
                      device: torch.device) -> torch.Tensor:
    """open_clip's classifier: the mean of each class's normalised prompt embeddings, renormalised (D x C)."""
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, list(classnames), list(templates),
                                                   num_classes_per_batch=None, device=device)
    return weights.float().cpu()


def predict(features: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    return (features @ weights).argmax(dim=1).numpy()
