"""``train``: the loop (``poisonlab.training.loop``) with a run folder (``poisonlab.training.run_folder``).

A registered objective (CLIP by default) says what is trained; the loop trains it in a keyed data order;
the run folder checkpoints every epoch, so ``--resume`` (or ``stop_after_epoch`` and a later resume)
gives exactly the run that never stopped.
"""

from __future__ import annotations

from pathlib import Path

import poisonlab.training.clip_objective  # noqa: F401  (registers the "clip" objective)
from poisonlab.training.config import TrainSettings
from poisonlab.training.data import open_shard_set
from poisonlab.training.lineage import write_data_record
from poisonlab.training.loop import run_loop
from poisonlab.training.objectives import get_objective
from poisonlab.training.precision import pick_device
from poisonlab.training.progress import StepBar
from poisonlab.training.run_folder import SUMMARY_NAME, RunFolder, TrainResult
from poisonlab.training.session import open_session, torch_runtime

__all__ = ["SUMMARY_NAME", "TrainResult", "pick_device", "train"]


def train(shards: Path, out: Path, settings: TrainSettings, resume: bool = False, progress: bool = True,
          stop_after_epoch: int | None = None) -> TrainResult | None:
    """Train (or resume) a run; a run whose epochs are all done returns its summary without work.

    ``stop_after_epoch`` checkpoints and returns None once that many epochs are done, so a long run can be
    split across time-limited jobs (each resuming the last); the result is the same as one uninterrupted run.
    """
    shards, out = Path(shards), Path(out)
    shard_set = open_shard_set(shards)
    objective = get_objective(settings)  # an unknown objective or parameter fails before the folder exists
    folder = RunFolder(out, {**settings.model_dump(), "shards": str(shards.resolve())})
    folder.open(resume)
    write_data_record(out, shards)  # what `evaluate --attack-from` checks the attack against
    done = folder.finished(settings.epochs)
    if done is not None:
        return done
    with torch_runtime(settings):
        session = open_session(shard_set, settings, folder.load_state(objective), objective)
        start = session.progress.epoch
        until = settings.epochs if stop_after_epoch is None else min(settings.epochs, max(start + 1, stop_after_epoch))
        steps_per_epoch = max(1, shard_set.samples // settings.batch_size)
        bar = StepBar(steps_per_epoch * settings.epochs, session.progress.step, progress, f"train {out.name}")
        try:
            run_loop(session, until, hooks=folder.hooks(session), bar=bar)
        finally:
            bar.close()
        if session.progress.epoch < settings.epochs:
            return None
        return folder.finish(session, resumed_from_epoch=start)
