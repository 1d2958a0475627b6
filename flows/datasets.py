"""Flows that produce or inspect datasets: generate the built-in dataset, run a stage chain over shards."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.pipelines.stage import Stage
from poisonlab.shards.graph_modality import GRAPH_MODALITY
from poisonlab.shards.graph_synth import CLASSNAMES as GRAPH_CLASSNAMES
from poisonlab.shards.graph_synth import GraphSynthSource, GraphSynthSpec, write_graph_eval_metadata
from poisonlab.shards.plan import FolderJob, folder_job
from poisonlab.shards.synth import CLASSNAMES, SynthSource, SynthSpec, write_eval_metadata


def synth_job(source: SynthSource | GraphSynthSource, out: Path, overwrite: bool = False,
              modality: str = "image") -> FolderJob:
    """Generated shards into ``out``, recorded as a dataset of ``modality`` (``dataset.json``)."""
    return FolderJob(source, tuple(source.shards()), Path(out), overwrite=overwrite, modality=modality)


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


def synth_graph_dataset(out: Path, spec: GraphSynthSpec, eval_per_class: int, runner: RunnerSpec,
                        overwrite: bool = False) -> dict:
    """The generated graph dataset in ``out`` (recorded as ``graph``) and a balanced split in ``out/eval``."""
    out = Path(out)
    train = synth_job(GraphSynthSource(spec), out, overwrite, GRAPH_MODALITY)
    result = {"train": run_job(train, runner, "synth"), "out": str(out), "modality": GRAPH_MODALITY}
    if eval_per_class > 0:
        eval_spec = dataclasses.replace(spec, samples=eval_per_class * len(GRAPH_CLASSNAMES), partial_rate=0.0,
                                        noise_rate=0.0, junk_rate=0.0)
        eval_dir = out / "eval"
        job = synth_job(GraphSynthSource(eval_spec, split="eval", balanced=True), eval_dir, overwrite, GRAPH_MODALITY)
        result["eval"] = run_job(job, runner, "synth-eval")
        write_graph_eval_metadata(eval_dir)
    return result


@dataclasses.dataclass(frozen=True)
class SynthRequest:
    """What ``poisonlab synth`` was asked for, whatever the modality."""

    out: Path
    samples: int
    seed: int
    samples_per_shard: int
    eval_per_class: int
    image_size: int = 32


def _synth_images(req: SynthRequest, runner: RunnerSpec, overwrite: bool) -> dict:
    spec = SynthSpec(samples=req.samples, seed=req.seed, image_size=req.image_size,
                     samples_per_shard=req.samples_per_shard)
    return synth_dataset(req.out, spec, req.eval_per_class, runner, overwrite=overwrite)


def _synth_graphs(req: SynthRequest, runner: RunnerSpec, overwrite: bool) -> dict:
    spec = GraphSynthSpec(samples=req.samples, seed=req.seed, samples_per_shard=req.samples_per_shard)
    return synth_graph_dataset(req.out, spec, req.eval_per_class, runner, overwrite=overwrite)


# The generated dataset of each modality (``poisonlab synth --modality``).
GENERATORS: dict[str, Callable[[SynthRequest, RunnerSpec, bool], dict]] = {
    "image": _synth_images,
    GRAPH_MODALITY: _synth_graphs,
}


def run_chain(src: Path, dst: Path, stages: Sequence[Stage], runner: RunnerSpec, label: str) -> dict:
    """Run a stage chain over every shard of ``src`` into ``dst`` (``sizes.json``, ``dataset.json``); totals."""
    return run_job(folder_job(Path(src), Path(dst), stages), runner, label)
