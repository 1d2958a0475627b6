"""The live objects of a training run (model, optimiser, scaler, schedule, data stream) and their state.

``open_session`` builds them from a ``TrainState`` (or fresh, from the seed); ``export_state`` turns them
back into one; ``torch_runtime`` holds the process-wide torch settings for as long as a session runs. The loop (``poisonlab.training.loop``) runs steps on a session; nothing here trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from poisonlab.shards.reader import ReadPolicy
from poisonlab.training.config import TrainSettings
from poisonlab.training.data import DataError, ShardSet, StreamSpec, read_policy
from poisonlab.training.decoded_cache import DecodedShards
from poisonlab.training.objectives import Built, TrainingObjective, get_objective
from poisonlab.training.precision import adamw, autocast_for, pick_device
from poisonlab.training.schedule import CosineWarmup
from poisonlab.training.state import Progress, TrainState, cpu_copy


@dataclasses.dataclass
class Session:
    """The live objects of a run: built from a ``TrainState`` (or fresh), exported back into one."""

    settings: TrainSettings
    objective: TrainingObjective
    built: Built
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable[[], Any]
    schedule: CosineWarmup
    device: torch.device
    stream: StreamSpec
    progress: Progress
    cache: DecodedShards | None = None  # decoded shards replayed by later epochs (in-process reading only)


def schedule_for(shard_set: ShardSet, settings: TrainSettings) -> CosineWarmup:
    """Warm-up, the full rate until the last ``decay_fraction`` of the remaining steps, then cosine to zero:
    a pure function of the optimiser step."""
    total_steps = max(1, shard_set.samples // settings.batch_size) * settings.epochs
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, total_steps // 20)
    stable = round(max(0, total_steps - warmup) * (1.0 - settings.decay_fraction))
    return CosineWarmup(settings.lr, warmup, total_steps, stable_steps=stable)


@contextlib.contextmanager
def torch_runtime(settings: TrainSettings) -> Iterator[None]:
    """The run's torch threads and deterministic CPU kernels, put back as they were when the run ends.

    Both are process-wide: a library call that left them set would run everything after it in the caller's
    process (a test session, a notebook, a federated server between rounds) on one thread, or slower kernels.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if pick_device(settings.device).type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def check_payloads(objective: TrainingObjective, policy: ReadPolicy, settings: TrainSettings, directory: Path) -> None:
    """Refuse, in one line and before any work, shards whose payloads the objective cannot read (a graph
    objective on image shards, CLIP on graphs). Asked of the objective's declared ``payload_extensions``
    (an optional capability: an objective that declares none reads whatever its codec accepts)."""
    wanted = getattr(objective, "payload_extensions", None)
    if wanted is not None and not set(wanted) & set(policy.payload_extensions):
        raise DataError(f"objective {settings.objective!r} trains on .{'/.'.join(sorted(wanted))} payloads, but "
                        f"{directory} holds .{'/.'.join(sorted(policy.payload_extensions))} (its dataset.json modality)")


def open_session(shard_set: ShardSet, settings: TrainSettings, state: TrainState | None = None,
                 objective: TrainingObjective | None = None) -> Session:
    """Build the objective's model (seeded) and the optimiser, then load ``state`` into them if given."""
    device = pick_device(settings.device)
    policy = read_policy(shard_set.directory, settings.max_pixels)
    stream = StreamSpec(shard_set, settings.batch_size, settings.seed, settings.shuffle_buffer, settings.workers,
                        policy=policy)
    objective = objective or get_objective(settings)
    check_payloads(objective, policy, settings, shard_set.directory)
    torch.manual_seed(settings.seed)  # a fresh model's initial weights
    built = objective.build(settings)
    if state is not None:
        built.model.load_state_dict(state.weights)
    built.model.to(device).train()
    optimizer = adamw(built.model, settings)
    autocast, needs_scaler = autocast_for(device, settings.precision)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
    progress = Progress()
    if state is not None:
        if state.optimizer is not None:
            optimizer.load_state_dict(cpu_copy(state.optimizer))  # a copy: the caller's state stays as it was
        if scaler is not None and state.grad_scaler:
            scaler.load_state_dict(state.grad_scaler)
        progress = Progress.from_dict(state.progress.to_dict())
        _restore_rng(state, device, progress)
    cache = DecodedShards(built.codec, settings.cache_bytes) if settings.workers == 0 and settings.cache_bytes else None
    return Session(settings, objective, built, optimizer, scaler, autocast, schedule_for(shard_set, settings),
                   device, stream, progress, cache)


def _restore_rng(state: TrainState, device: torch.device, progress: Progress) -> None:
    if progress.batch == 0 or not state.rng:
        return  # at an epoch boundary the loop reseeds from (seed, epoch)
    torch.set_rng_state(state.rng["cpu"])
    if device.type == "cuda" and "cuda" in state.rng:
        torch.cuda.set_rng_state(state.rng["cuda"], device)


def export_state(session: Session) -> TrainState:
    """The session as plain CPU data (generator state included when it stopped inside an epoch)."""
    rng = None
    if session.progress.batch > 0:
        rng = {"cpu": torch.get_rng_state()}
        if session.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(session.device)
    return TrainState(
        weights=cpu_copy(session.built.model.state_dict()), optimizer=cpu_copy(session.optimizer.state_dict()),
        progress=Progress.from_dict(session.progress.to_dict()),
        grad_scaler=session.scaler.state_dict() if session.scaler is not None else None, rng=rng)


