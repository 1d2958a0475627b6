"""What a training run is at any step, as plain data: weights, optimiser state, data position, RNG.

A ``TrainState`` is what ``local_update`` takes and returns (federated clients, fine-tuning defenses) and
what a run folder saves at each epoch. It holds copies on the CPU, never live objects, so a state can be
kept, sent, averaged or continued twice, and continuing it gives exactly the run that never stopped:
the data position (epoch, batches consumed in it) restarts the keyed stream where it was, the step
drives the schedule, and the generator state is kept when a call stops mid-epoch.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from typing import Any

import torch


@dataclasses.dataclass
class Progress:
    """Where a run stands: the data position, the optimiser step and the counts so far."""

    epoch: int = 0
    batch: int = 0  # batches of the epoch's stream already consumed (trained on or skipped)
    step: int = 0
    samples_seen: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def add_skipped(self, counts: dict[str, int]) -> None:
        if counts:
            self.skipped = dict(Counter(self.skipped) + Counter(counts))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Progress:
        return cls(int(raw.get("epoch", 0)), int(raw.get("batch", 0)), int(raw.get("step", 0)),
                   int(raw.get("samples_seen", 0)), dict(raw.get("skipped", {})))


@dataclasses.dataclass
class TrainState:
    """Model weights, optimiser and grad-scaler state, progress and (mid-epoch) generator state."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None  # ``Optimizer.state_dict()``; None: a fresh optimiser
    progress: Progress = dataclasses.field(default_factory=Progress)
    grad_scaler: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] | None = None  # torch generator states when stopped mid-epoch

    def copy(self) -> TrainState:
        """A deep copy (tensors included): continuing one copy never changes the other."""
        return copy.deepcopy(self)


def cpu_copy(value: Any) -> Any:
    """Tensors anywhere inside ``value`` cloned to the CPU (state dicts of live models and optimisers)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cpu_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(cpu_copy(v) for v in value)
    return copy.deepcopy(value)
