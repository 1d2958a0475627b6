"""Contrastive pretraining of an open_clip model on WebDataset shards: a short loop on open_clip's library.

open_clip provides the architecture, tokenizer and ``ClipLoss``; this loop adds what a lab needs around
them: keyed data order, a checkpoint per epoch that resumes without pickle, metrics tables and a plot.
A run folder holds everything: ``model.safetensors`` + ``model_config.json`` (loadable by
``poisonlab.models``), ``optimizer.safetensors`` + ``train_state.json`` (for ``--resume``),
``metrics_steps.csv`` / ``metrics_epochs.csv`` (+ parquet), ``loss.png`` and ``train_summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import open_clip
import torch

from poisonlab.models.zoo import ModelSpec, load_model
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.training.checkpoint import ResumeError, read_training_state, restore, save_training_state
from poisonlab.training.config import RUNTIME_ONLY, TrainSettings
from poisonlab.training.data import ImageFormat, StreamSpec, TokenCache, iterate_epoch, open_shard_set
from poisonlab.training.metrics import (
    EPOCH_FIELDS,
    EPOCHS_CSV,
    LOSS_PNG,
    STEP_FIELDS,
    STEPS_CSV,
    MetricsTable,
    plot_losses,
)
from poisonlab.training.schedule import CosineWarmup

SUMMARY_NAME = "train_summary.json"
MAX_LOGIT_SCALE = math.log(100)


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    epochs: int
    steps: int
    samples: int
    seconds: float
    pairs_per_s: float
    final_loss: float
    skipped: dict[str, int]
    device: str
    resumed_from_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    return device


def _autocast(device: torch.device, precision: str) -> tuple[Any, bool]:
    """(context factory, needs a grad scaler): bf16 autocast where supported, else fp16 with a scaler."""
    use_amp = precision == "amp" or (precision == "auto" and device.type == "cuda")
    if not use_amp:
        return contextlib.nullcontext, False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.float16)), True
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), False


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip_train's rule: no weight decay on gains, biases, norms, embeddings' scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _adamw(model: torch.nn.Module, settings: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass per tensor instead of a dozen. On CPUs it also avoids
    ``torch.sqrt`` over the token-embedding state, which is mostly zeros (rows of unused tokens) and
    runs several times slower than on ordinary values; the multi-tensor path spends ~10% of a step there.
    """
    kwargs: dict[str, Any] = {"lr": settings.lr, "betas": (settings.beta1, settings.beta2), "eps": settings.eps}
    try:
        return torch.optim.AdamW(_param_groups(model, settings.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype the fused kernel does not support
        return torch.optim.AdamW(_param_groups(model, settings.weight_decay), **kwargs)


def _check_resumable(state: dict[str, Any], config: dict[str, Any], run_dir: Path) -> None:
    saved = {k: v for k, v in state["config"].items() if k not in RUNTIME_ONLY}
    wanted = {k: v for k, v in config.items() if k not in RUNTIME_ONLY}
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if diff:
        raise ResumeError(f"cannot resume {run_dir}: settings differ from the saved run in "
                          + ", ".join(f"{k} ({saved.get(k)!r} -> {wanted.get(k)!r})" for k in diff))


def _seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


class _Bar:
    """A tqdm bar over steps with pairs/s and the loss, on stderr; silent when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool, label: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(self, loss: float, rate: float, epoch: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch} loss {loss:.3f} {rate:,.0f} pairs/s")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(shards: Path, out: Path, settings: TrainSettings, resume: bool = False, progress: bool = True,
          stop_after_epoch: int | None = None) -> TrainResult | None:
    """Train (or resume) a run; a run whose epochs are all done returns its summary without work.

    ``stop_after_epoch`` checkpoints and returns None once that many epochs are done, so a long run can be
    split across time-limited jobs (each resuming the last); the result is the same as one uninterrupted run.
    """
    shards, out = Path(shards), Path(out)
    shard_set = open_shard_set(shards)
    config = {**settings.model_dump(), "shards": str(shards.resolve())}
    state = read_training_state(out)
    if state is not None and not resume:
        raise ResumeError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if state is not None:
        _check_resumable(state, config, out)
        if state["progress"]["epoch"] >= settings.epochs and (out / SUMMARY_NAME).exists():
            return TrainResult(**json.loads((out / SUMMARY_NAME).read_text()))
    out.mkdir(parents=True, exist_ok=True)

    device = pick_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    _seed_everything(settings.seed, device)
    loaded = load_model(ModelSpec(settings.model), "cpu")
    model = loaded.model
    fmt = ImageFormat.for_model(model, loaded.image_size, settings.max_pixels)
    tokens = TokenCache(loaded.tokenizer)
    model.to(device).train()
    optimizer = _adamw(model, settings, device)
    autocast, needs_scaler = _autocast(device, settings.precision)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    start_epoch, step, samples_seen = 0, 0, 0
    skipped: Counter[str] = Counter()
    if state is not None:
        restore(out, model, optimizer, state)
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, step, samples_seen = (state["progress"][k] for k in ("epoch", "step", "samples_seen"))
        skipped.update(state["progress"].get("skipped", {}))

    steps_per_epoch = max(1, shard_set.samples // settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, total_steps // 20)
    schedule = CosineWarmup(settings.lr, warmup, total_steps)
    loss_fn = open_clip.ClipLoss()
    stream = StreamSpec(shard_set, settings.batch_size, settings.seed, settings.shuffle_buffer, settings.workers)

    step_table = MetricsTable(out / STEPS_CSV, STEP_FIELDS)
    epoch_table = MetricsTable(out / EPOCHS_CSV, EPOCH_FIELDS)
    step_table.reset(keep_before_epoch=start_epoch)
    epoch_table.reset(keep_before_epoch=start_epoch)
    bar = _Bar(total_steps, step, progress, f"train {out.name}")
    last_loss = float("nan")
    try:
        for epoch in range(start_epoch, settings.epochs):
            epoch_start = time.perf_counter()
            torch.manual_seed(keyed_u64(settings.seed, "train/torch", str(epoch)) % 2**63)  # resume-exact RNG
            epoch_steps, epoch_samples, loss_sum = 0, 0, 0.0
            epoch_skipped: Counter[str] = Counter()
            window_start, window_samples = time.perf_counter(), 0
            for batch in iterate_epoch(stream, epoch, fmt, tokens):
                epoch_skipped.update(batch.skipped)
                if len(batch) < 2:
                    continue
                lr = schedule(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = batch.images.to(device, non_blocking=True)
                texts = batch.texts.to(device, non_blocking=True)
                with autocast():
                    image_features, text_features, logit_scale = model(images, texts)[:3]
                    loss = loss_fn(image_features, text_features, logit_scale)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if settings.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if settings.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                last_loss = float(loss.detach())
                step += 1
                epoch_steps += 1
                epoch_samples += len(batch)
                samples_seen += len(batch)
                window_samples += len(batch)
                loss_sum += last_loss
                now = time.perf_counter()
                rate = window_samples / max(1e-9, now - window_start)
                bar.update(last_loss, rate, epoch)
                if step % settings.log_every == 0:
                    step_table.append([{"epoch": epoch, "step": step, "samples_seen": samples_seen, "loss": round(last_loss, 6),
                                 "lr": lr, "logit_scale": round(float(logit_scale.detach()), 6),
                                 "pairs_per_s": round(rate, 1)}])
                    window_start, window_samples = now, 0
            if epoch_steps == 0:
                raise ResumeError(f"epoch {epoch} produced no batch of >= 2 pairs from {shards}; "
                                  f"skipped: {dict(epoch_skipped)}")
            seconds = time.perf_counter() - epoch_start
            skipped.update(epoch_skipped)
            epoch_table.append([{"epoch": epoch, "steps": epoch_steps, "samples": epoch_samples,
                                 "mean_loss": round(loss_sum / epoch_steps, 6), "last_lr": schedule(step - 1),
                                 "seconds": round(seconds, 2), "pairs_per_s": round(epoch_samples / seconds, 1),
                                 "skipped": json.dumps(dict(sorted(epoch_skipped.items())))}])
            save_training_state(out, model, loaded.arch, optimizer,
                                {"epoch": epoch + 1, "step": step, "samples_seen": samples_seen,
                                 "skipped": dict(skipped)},
                                config, scaler.state_dict() if scaler is not None else None)
            plot_losses({out.name: out / STEPS_CSV}, out / LOSS_PNG)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < settings.epochs:
                return None
    finally:
        bar.close()

    step_table.to_parquet()
    epoch_table.to_parquet()
    epochs_done = epoch_table.read()
    total_seconds = sum(float(r["seconds"]) for r in epochs_done)
    total_samples = sum(int(r["samples"]) for r in epochs_done)
    result = TrainResult(
        run_dir=str(out), epochs=settings.epochs, steps=step, samples=total_samples, seconds=round(total_seconds, 2),
        pairs_per_s=round(total_samples / max(1e-9, total_seconds), 1),
        final_loss=float(epochs_done[-1]["mean_loss"]), skipped=dict(sorted(skipped.items())), device=str(device),
        resumed_from_epoch=start_epoch,
    )
    tmp = out / (SUMMARY_NAME + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    tmp.replace(out / SUMMARY_NAME)
    return result
