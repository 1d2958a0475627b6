"""Models built once per worker process and reused by every client task that runs there.

Building the tiny CLIP (open_clip model, tokenizer) costs about half a second, more than a few local steps;
a round of many short client tasks would spend most of its time building. Every client task loads the
round's global weights into the model before training (``open_session``) and the loop reseeds torch at the
start of each epoch, so reusing the object changes no result: only the construction is skipped. The codec
(with its token cache) is reused too.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from poisonlab.models.zoo import LoadedModel, ModelSpec, load_model, quiet_random_init
from poisonlab.training.config import TrainSettings
from poisonlab.training.objectives import Built, TrainingObjective, get_objective

_BUILT: dict[str, Built] = {}


def _key(settings: TrainSettings) -> str:
    return f"{settings.objective}|{sorted(settings.objective_params.items())}|{settings.model}|{settings.max_pixels}"


@dataclasses.dataclass
class ReusedObjective:
    """The settings' objective, whose ``build`` returns this process's one model for those settings."""

    inner: TrainingObjective

    @property
    def step_logs(self) -> tuple[str, ...]:
        return self.inner.step_logs

    def build(self, settings: TrainSettings) -> Built:
        key = _key(settings)
        if key not in _BUILT:
            with quiet_random_init():
                _BUILT[key] = self.inner.build(settings)
        return _BUILT[key]

    def __getattr__(self, name: str) -> Any:  # loss, after_step, save, load
        return getattr(self.inner, name)


def reused_objective(settings: TrainSettings) -> ReusedObjective:
    return ReusedObjective(get_objective(settings))


@functools.lru_cache(maxsize=4)
def inference_model(arch: str) -> LoadedModel:
    """One model of ``arch`` per process for embedding (its weights are replaced before each use)."""
    with quiet_random_init():
        return load_model(ModelSpec(arch), "cpu")
