"""Training metrics as tables (CSV while running, parquet at the end) and a loss-curve plot."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poisonlab.shards.layout import atomic_path

STEP_FIELDS = ("epoch", "step", "samples_seen", "loss", "lr", "logit_scale", "pairs_per_s")
EPOCH_FIELDS = ("epoch", "steps", "samples", "mean_loss", "last_lr", "seconds", "pairs_per_s", "skipped")
STEPS_CSV = "metrics_steps.csv"
EPOCHS_CSV = "metrics_epochs.csv"
LOSS_PNG = "loss.png"


def step_fields(objective_logs: Sequence[str]) -> tuple[str, ...]:
    """The step table's columns: the loop's, with the objective's logged values before the rate."""
    return (*STEP_FIELDS[:5], *objective_logs, STEP_FIELDS[-1])


class MetricsTable:
    """Append-only CSV of rows; on resume, rows past the restored epoch are dropped first."""

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)

    def reset(self, keep_before_epoch: int = 0) -> None:
        rows = [r for r in self.read() if int(r["epoch"]) < keep_before_epoch]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerows(rows)

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def to_parquet(self) -> Path:
        import pandas as pd

        out = self.path.with_suffix(".parquet")
        pd.read_csv(self.path).to_parquet(out, index=False)
        return out


def plot_losses(curves: dict[str, Path], out: Path, title: str = "training loss") -> Path:
    """One line per run (step CSVs), smoothed lightly so trends show through batch noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for label, path in curves.items():
        if not Path(path).exists():
            continue
        frame = pd.read_csv(path)
        if frame.empty:
            continue
        ax.plot(frame["samples_seen"], frame["loss"], alpha=0.25, linewidth=0.8)
        window = max(1, len(frame) // 30)
        ax.plot(frame["samples_seen"], frame["loss"].rolling(window, min_periods=1).mean(),
                color=ax.lines[-1].get_color(), label=label, linewidth=1.6)
    ax.set_xlabel("pairs seen")
    ax.set_ylabel("contrastive loss")
    ax.set_title(title)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    with atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out)
