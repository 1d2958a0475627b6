"""The progress bar of a training run (tqdm on stderr, steps with pairs/s and the loss)."""

from __future__ import annotations

import sys


class StepBar:
    """A tqdm bar over steps; silent when disabled, so the loop never asks whether it is shown."""

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
