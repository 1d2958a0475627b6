"""Device, precision and optimiser choices of the loop (independent of what is trained)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from poisonlab.training.config import TrainSettings


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return device


def autocast_for(device: torch.device, precision: str) -> tuple[Callable[[], Any], bool]:
    """(context factory, needs a grad scaler): bf16 autocast where supported, else fp16 with a scaler."""
    use_amp = precision == "amp" or (precision == "auto" and device.type == "cuda")
    if not use_amp:
        return contextlib.nullcontext, False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), True
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), False


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip_train's rule: no weight decay on gains, biases, norms, embeddings' scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def adamw(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass per tensor instead of a dozen. On CPUs it also avoids
    ``torch.sqrt`` over the token-embedding state, which is mostly zeros (rows of unused tokens) and
    runs several times slower than on ordinary values; the multi-tensor path spends ~10% of a step there.
    """
    kwargs: dict[str, Any] = {"lr": settings.lr, "betas": (settings.beta1, settings.beta2), "eps": settings.eps}
    try:
        return torch.optim.AdamW(param_groups(model, settings.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(param_groups(model, settings.weight_decay), **kwargs)
