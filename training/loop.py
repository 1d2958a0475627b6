"""The training loop: optimiser steps, schedule, precision, gradient clipping, progress and metrics rows.

It knows nothing of what is trained (a registered ``TrainingObjective`` builds the model, decodes samples
and computes the loss) nor of run folders (``poisonlab.training.trainer`` saves checkpoints and tables
through the hooks). ``local_update`` is the loop alone: a ``TrainState`` in, a ``TrainState`` out, so
federated clients, fine-tuning defenses and resumed runs all train exactly as ``poisonlab train`` does.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.training.config import TrainSettings
from poisonlab.training.data import Batch, DataError, ShardSet, iterate_epoch, open_shard_set
from poisonlab.training.objectives import TrainingObjective, get_objective
from poisonlab.training.progress import StepBar
from poisonlab.training.session import Session, export_state, open_session, torch_runtime
from poisonlab.training.state import Progress, TrainState, cpu_copy

Row = dict[str, Any]


def _optimizer_step(session: Session, loss: torch.Tensor) -> None:
    model, optimizer, scaler, clip = session.built.model, session.optimizer, session.scaler, session.settings.grad_clip
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    session.objective.after_step(model)


def train_step(session: Session, batch: Batch) -> tuple[float, float, dict[str, torch.Tensor]]:
    """One optimiser step on one batch: (loss, learning rate, the objective's logs)."""
    progress = session.progress
    lr = session.schedule(progress.step)
    for group in session.optimizer.param_groups:
        group["lr"] = lr
    inputs = {name: t.to(session.device, non_blocking=True) for name, t in batch.inputs.items()}
    with session.autocast():
        out = session.objective.loss(session.built.model, inputs)
    _optimizer_step(session, out.loss)
    progress.step += 1
    progress.samples_seen += len(batch)
    return float(out.loss.detach()), lr, out.logs


@dataclasses.dataclass
class LoopHooks:
    """What a caller does with the loop's rows: a step row every ``log_every`` steps, one row per epoch."""

    on_step: Callable[[Row], None] = lambda row: None
    on_epoch: Callable[[Row], None] = lambda row: None


@dataclasses.dataclass
class UpdateStats:
    """What one call of the loop did (``local_update``'s second result)."""

    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    last_loss: float = math.nan
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean_loss": self.mean_loss}


class _EpochMeter:
    """Counts of the part of an epoch this call runs, and the pairs/s window of the step rows."""

    def __init__(self, first_batch: int) -> None:
        self.first_batch = first_batch
        self.start = self.window_start = time.perf_counter()
        self.steps, self.samples, self.window_samples, self.loss_sum = 0, 0, 0, 0.0
        self.skipped: Counter[str] = Counter()

    def add(self, samples: int, loss: float) -> float:
        """Record a step; returns the pairs/s since the last logged row."""
        self.steps += 1
        self.samples += samples
        self.window_samples += samples
        self.loss_sum += loss
        return self.window_samples / max(1e-9, time.perf_counter() - self.window_start)

    def logged(self) -> None:
        self.window_start, self.window_samples = time.perf_counter(), 0

    def epoch_row(self, epoch: int, last_lr: float) -> Row:
        seconds = time.perf_counter() - self.start
        return {"epoch": epoch, "steps": self.steps, "samples": self.samples,
                "mean_loss": round(self.loss_sum / self.steps, 6), "last_lr": last_lr, "seconds": round(seconds, 2),
                "pairs_per_s": round(self.samples / seconds, 1), "skipped": json.dumps(dict(sorted(self.skipped.items())))}


def _step_row(p: Progress, loss: float, lr: float, logs: dict[str, torch.Tensor], rate: float) -> Row:
    values = {name: round(float(value.detach()), 6) for name, value in logs.items()}
    return {"epoch": p.epoch, "step": p.step, "samples_seen": p.samples_seen, "loss": round(loss, 6), "lr": lr,
            **values, "pairs_per_s": round(rate, 1)}


def _run_epoch(session: Session, max_step: int | None, hooks: LoopHooks, stats: UpdateStats, bar: StepBar) -> bool:
    """Train from the current data position to the end of its epoch (True) or to ``max_step`` (False)."""
    p = session.progress
    if p.batch == 0:
        torch.manual_seed(keyed_u64(session.settings.seed, "train/torch", str(p.epoch)) % 2**63)
    meter = _EpochMeter(p.batch)
    for batch in iterate_epoch(session.stream, p.epoch, session.built.codec, p.batch, session.cache):
        p.batch += 1
        p.add_skipped(batch.skipped)
        meter.skipped.update(batch.skipped)
        stats.skipped = dict(Counter(stats.skipped) + Counter(batch.skipped))
        if len(batch) < 2:
            continue
        loss, lr, logs = train_step(session, batch)
        rate = meter.add(len(batch), loss)
        stats.steps, stats.samples, stats.loss_sum, stats.last_loss = (
            stats.steps + 1, stats.samples + len(batch), stats.loss_sum + loss, loss)
        bar.update(loss, rate, p.epoch)
        if p.step % session.settings.log_every == 0:
            hooks.on_step(_step_row(p, loss, lr, logs, rate))
            meter.logged()
        if max_step is not None and p.step >= max_step:
            return False
    if meter.steps == 0 and meter.first_batch == 0:
        raise DataError(f"epoch {p.epoch} produced no batch of >= 2 samples from {session.stream.shard_set.directory}; "
                        f"skipped: {dict(meter.skipped)}")
    row = meter.epoch_row(p.epoch, session.schedule(p.step - 1)) if meter.steps else None
    p.epoch, p.batch = p.epoch + 1, 0
    if row is not None:
        hooks.on_epoch(row)  # after the position moved on: a checkpoint taken here resumes at the next epoch
    return True


def run_loop(session: Session, until_epoch: int, max_step: int | None = None, hooks: LoopHooks | None = None,
             bar: StepBar | None = None) -> UpdateStats:
    """Train until the data position reaches ``until_epoch`` or the optimiser step reaches ``max_step``."""
    hooks = hooks or LoopHooks()
    bar = bar or StepBar(0, 0, False, "")
    stats = UpdateStats()
    started = time.perf_counter()
    while session.progress.epoch < until_epoch and (max_step is None or session.progress.step < max_step):
        if not _run_epoch(session, max_step, hooks, stats, bar):
            break
    stats.seconds = round(time.perf_counter() - started, 3)
    return stats


def init_state(settings: TrainSettings, objective: TrainingObjective | None = None) -> TrainState:
    """A fresh model as a state: the weights a run with these settings starts from (seeded)."""
    torch.manual_seed(settings.seed)
    built = (objective or get_objective(settings)).build(settings)
    return TrainState(weights=cpu_copy(built.model.state_dict()))


def local_update(state: TrainState | None, shards: Path | ShardSet, settings: TrainSettings, steps: int | None = None,
                 epochs: int | None = None, objective: TrainingObjective | None = None) -> tuple[TrainState, UpdateStats]:
    """Continue ``state`` (None: fresh, seeded) on ``shards`` for ``steps`` optimiser steps and/or ``epochs``
    epochs (neither: up to ``settings.epochs``), without a run folder; ``state`` itself is not changed.

    The data order is keyed by (seed, epoch) and the state records the data position, so two calls of k
    steps give exactly the weights of one call of 2k steps.
    """
    shard_set = shards if isinstance(shards, ShardSet) else open_shard_set(Path(shards))
    with torch_runtime(settings):
        session = open_session(shard_set, settings, state, objective)
        p = session.progress
        if epochs is not None:
            until_epoch = p.epoch + epochs
        else:  # steps alone are not bounded by the settings' epochs (the schedule has decayed to zero by then)
            until_epoch = settings.epochs if steps is None else sys.maxsize
        stats = run_loop(session, until_epoch, p.step + steps if steps is not None else None)
        return export_state(session), stats
