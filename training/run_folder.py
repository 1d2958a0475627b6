"""A training run's folder: checkpoints per epoch, metrics tables, the loss plot, the summary, resume.

``model.safetensors`` + ``model_config.json`` (written by the objective; loadable by ``poisonlab.models``),
``optimizer.safetensors`` + ``train_state.json`` (for ``--resume``), ``metrics_steps.csv`` /
``metrics_epochs.csv`` (+ parquet at the end), ``loss.png`` and ``train_summary.json``. The loop never
sees the folder: it reports rows through hooks, and the folder saves a checkpoint at each epoch's end.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from poisonlab.shards.layout import atomic_write_json
from poisonlab.training.checkpoint import (
    ResumeError,
    load_training_state,
    read_training_state,
    save_training_state,
)
from poisonlab.training.config import RUNTIME_ONLY, TrainSettings
from poisonlab.training.loop import LoopHooks, Row
from poisonlab.training.metrics import (
    EPOCH_FIELDS,
    EPOCHS_CSV,
    LOSS_PNG,
    STEPS_CSV,
    MetricsTable,
    plot_losses,
    step_fields,
)
from poisonlab.training.objectives import TrainingObjective
from poisonlab.training.session import Session, export_state
from poisonlab.training.state import TrainState

SUMMARY_NAME = "train_summary.json"


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


def _check_resumable(saved: dict[str, Any], config: dict[str, Any], run_dir: Path) -> None:
    """Settings that change what is computed must match; fields added since the run was saved take their
    defaults (a run saved before objectives existed resumes as the CLIP run it was)."""
    defaults = TrainSettings().model_dump()
    before = {k: v for k, v in {**defaults, **saved["config"]}.items() if k not in RUNTIME_ONLY}
    wanted = {k: v for k, v in config.items() if k not in RUNTIME_ONLY}
    diff = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
    if diff:
        raise ResumeError(f"cannot resume {run_dir}: settings differ from the saved run in "
                          + ", ".join(f"{k} ({before.get(k)!r} -> {wanted.get(k)!r})" for k in diff))


class RunFolder:
    """One run folder and the configuration (settings + data folder) it was, or will be, trained with."""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.out = Path(out)
        self.config = config
        self.saved: dict[str, Any] | None = None

    def open(self, resume: bool) -> None:
        """Refuse to overwrite a run without ``resume``, or to resume it with other settings."""
        self.saved = read_training_state(self.out)
        if self.saved is not None and not resume:
            raise ResumeError(f"{self.out} already holds a training run; pass --resume to continue it or "
                              "choose another --out")
        if self.saved is not None:
            _check_resumable(self.saved, self.config, self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def finished(self, epochs: int) -> TrainResult | None:
        """The summary of a run whose epochs are all done (None when there is work left)."""
        if self.saved is None or self.saved["progress"]["epoch"] < epochs or not (self.out / SUMMARY_NAME).exists():
            return None
        return TrainResult(**json.loads((self.out / SUMMARY_NAME).read_text()))

    def load_state(self, objective: TrainingObjective) -> TrainState | None:
        if self.saved is None:
            return None
        try:
            weights = objective.load(self.out)
        except (ValueError, OSError) as exc:
            raise ResumeError(f"cannot resume {self.out}: {exc}") from None
        return load_training_state(self.out, self.saved, weights)

    def hooks(self, session: Session) -> LoopHooks:
        """Step rows to the step table; at each epoch's end a row, a checkpoint and the loss plot."""
        start = session.progress.epoch
        self.steps = MetricsTable(self.out / STEPS_CSV, step_fields(session.objective.step_logs))
        self.epochs = MetricsTable(self.out / EPOCHS_CSV, EPOCH_FIELDS)
        self.steps.reset(keep_before_epoch=start)
        self.epochs.reset(keep_before_epoch=start)

        def on_epoch(row: Row) -> None:
            self.epochs.append([row])
            self.checkpoint(session)
            plot_losses({self.out.name: self.out / STEPS_CSV}, self.out / LOSS_PNG)

        return LoopHooks(on_step=lambda row: self.steps.append([row]), on_epoch=on_epoch)

    def checkpoint(self, session: Session) -> None:
        """Weights (the objective's files), then optimizer and progress; the state JSON is renamed last."""
        extra = {"trained_by": "poisonlab train", "train_config": self.config}
        session.objective.save(session.built, self.out, extra)
        save_training_state(self.out, export_state(session), self.config)

    def finish(self, session: Session, resumed_from_epoch: int) -> TrainResult:
        """Parquet copies of the tables and ``train_summary.json`` (totals over every epoch, resumed or not)."""
        self.steps.to_parquet()
        self.epochs.to_parquet()
        done = self.epochs.read()
        seconds = sum(float(r["seconds"]) for r in done)
        samples = sum(int(r["samples"]) for r in done)
        result = TrainResult(
            run_dir=str(self.out), epochs=session.settings.epochs, steps=session.progress.step, samples=samples,
            seconds=round(seconds, 2), pairs_per_s=round(samples / max(1e-9, seconds), 1),
            final_loss=float(done[-1]["mean_loss"]), skipped=dict(sorted(session.progress.skipped.items())),
            device=str(session.device), resumed_from_epoch=resumed_from_epoch)
        atomic_write_json(self.out / SUMMARY_NAME, result.to_dict())
        return result
