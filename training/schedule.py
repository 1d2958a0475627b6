"""Learning-rate schedule: linear warm-up, then cosine decay to zero (open_clip_train's default), optionally
after a stable phase at the full rate (warm-up, stable, decay: a short run keeps its full rate through the
epochs where its loss falls fastest, where a cosine over the whole run has already lowered it)."""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class CosineWarmup:
    """The rate at each optimizer step; a pure function of the step, so a resumed run continues exactly."""

    base_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0
    stable_steps: int = 0  # steps at base_lr between the warm-up and the decay

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        decay_start = self.warmup_steps + self.stable_steps
        if step < decay_start:
            return self.base_lr
        decay_steps = max(1, self.total_steps - decay_start)
        progress = min(1.0, (step - decay_start) / decay_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.base_lr - self.min_lr)
