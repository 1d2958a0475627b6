"""Flows that produce or inspect datasets: generate the built-in dataset, run a stage chain over shards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.pipelines.stage import Stage
from poisonlab.shards.plan import FolderJob, folder_job
from poisonlab.shards.synth import CLASSNAMES, SynthSource, SynthSpec, write_eval_metadata


def synth_job(source: SynthSource, out: Path, overwrite: bool = False) -> FolderJob:
    """Generated shards into ``out``, recorded as an image dataset (``dataset.json``)."""
    return FolderJob(source, tuple(source.shards()), Path(out), overwrite=overwrite)


def synth_dataset(out: Path, spec: SynthSpec, eval_per_class: int, runner: RunnerSpec,
                  overwrite: bool = False) -> dict:
    """Generate the training shards in ``out`` and a class-balanced evaluation split in ``out/eval``.

    A rerun resumes; shards another spec wrote (another seed, image size) are refused, or redone with
    ``overwrite``, before any work on them.
    """
    out = Path(out)
    result = {"train": run_job(synth_job(SynthSource(spec), out, overwrite), runner, "synth"), "out": str(out)}
    if eval_per_class > 0:
        eval_spec = SynthSpec(
            samples=eval_per_class * len(CLASSNAMES), seed=spec.seed, image_size=spec.image_size,
            samples_per_shard=spec.samples_per_shard, quality=spec.quality,
            partial_rate=0.0, noise_rate=0.0, junk_rate=0.0,
        )
        eval_dir = out / "eval"
        result["eval"] = run_job(synth_job(SynthSource(eval_spec, split="eval", balanced=True), eval_dir, overwrite),
                                 runner, "synth-eval")
        write_eval_metadata(eval_dir)
    return result


def run_chain(src: Path, dst: Path, stages: Sequence[Stage], runner: RunnerSpec, label: str) -> dict:
    """Run a stage chain over every shard of ``src`` into ``dst`` (``sizes.json``, ``dataset.json``); totals."""
    return run_job(folder_job(Path(src), Path(dst), stages), runner, label)
