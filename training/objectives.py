"""Training objectives: what the loop asks of a way of training, registered by name.

The loop (``poisonlab.training.loop``) owns the optimiser, schedule, precision, steps and metrics; an
objective owns everything that depends on what is trained: how the model is built, how a ``Sample``
becomes model input (``BatchCodec``, which runs in DataLoader workers), the loss of a batch, what happens
after each optimiser step (CLIP clamps its temperature) and what is saved. Objectives are components
(``get_registry("objective")``, listed by ``poisonlab components objective``), so a graph contrastive
objective, a fine-tuning defense or a test's toy model plugs in without touching the loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from poisonlab.pipelines.registry import RegistryError, get_registry
from poisonlab.pipelines.sample import Sample

if TYPE_CHECKING:
    from poisonlab.training.config import TrainSettings

OBJECTIVES = get_registry("objective")


class SkipSample(ValueError):
    """Raised by ``BatchCodec.decode``: the sample cannot be used; the message is the counted reason."""


@runtime_checkable
class BatchCodec(Protocol):
    """Samples to tensors, in the data workers: picklable, and never holding the model."""

    def decode(self, sample: Sample) -> Any:
        """One live sample to an item (raise ``SkipSample(reason)`` when it cannot be used)."""

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Items of one batch to named tensors (the loop moves them to the device)."""


@dataclasses.dataclass
class Built:
    """A model built by an objective, with the codec that feeds it and the name its weights are saved under."""

    model: torch.nn.Module
    codec: BatchCodec
    arch: str


@dataclasses.dataclass
class LossOutput:
    """The loss to minimise plus named values for the step table (tensors: read only when a row is logged)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


@runtime_checkable
class TrainingObjective(Protocol):
    """A registered way of training; the factory receives the objective's validated parameters."""

    step_logs: tuple[str, ...]  # names of ``LossOutput.logs``: columns of the step metrics table
    # Optional capability (not part of the protocol check): ``payload_extensions``, the shard payloads the
    # objective trains on; a run on shards of another modality is refused before any work (``session``).

    def build(self, settings: TrainSettings) -> Built:
        """A fresh model (initialised from torch's global generator, which the loop seeds) and its codec."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        """The loss of one collated batch (called under the loop's autocast)."""

    def after_step(self, model: torch.nn.Module) -> None:
        """Adjust parameters after each optimiser step (e.g. clamp a temperature)."""

    def save(self, built: Built, run_dir: Path, extra: dict[str, Any]) -> None:
        """Write the weights (safetensors) and whatever reloads them into ``run_dir``."""

    def load(self, run_dir: Path) -> dict[str, torch.Tensor]:
        """The weights ``save`` wrote, as a state dict for the built model (never unpickled)."""


def get_objective(settings: TrainSettings) -> TrainingObjective:
    """The objective the settings name, with its parameters validated before any work."""
    objective = OBJECTIVES.create(settings.objective, dict(settings.objective_params))
    if not isinstance(objective, TrainingObjective):
        raise RegistryError(f"objective {settings.objective!r} does not provide the TrainingObjective methods")
    return objective
