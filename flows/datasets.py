"""Flows that produce or inspect datasets: generate the built-in dataset, run a stage chain over shards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from poisonlab.flows.runtime import RunnerSpec, run_tasks
from poisonlab.pipelines.accounting import ShardStats
from poisonlab.pipelines.stage import Stage
from poisonlab.shards.markers import check_resume
from poisonlab.shards.plan import finalize_folder, plan_folder_tasks, plan_source_tasks
from poisonlab.shards.synth import CLASSNAMES, SynthSource, SynthSpec, write_eval_metadata


def synth_dataset(out: Path, spec: SynthSpec, eval_per_class: int, runner: RunnerSpec,
                  overwrite: bool = False) -> dict:
    """Generate the training shards in ``out`` and a class-balanced evaluation split in ``out/eval``.

    A rerun resumes; shards another spec wrote (another seed, image size) are refused, or redone with
    ``overwrite``, before any work.
    """
    out = Path(out)
    train = SynthSource(spec)
    train_tasks = plan_source_tasks(train, train.shards(), out)
    eval_tasks: list = []
    if eval_per_class > 0:
        ev = SynthSource(_eval_spec(spec, eval_per_class), split="eval", balanced=True)
        eval_tasks = plan_source_tasks(ev, ev.shards(), out / "eval")
    check_resume([*train_tasks, *eval_tasks], overwrite)
    train_stats = run_tasks(train_tasks, runner, label="synth")
    finalize_folder(out, train_stats)
    result = {"train": _totals(train_stats), "out": str(out)}
    if eval_tasks:
        eval_dir = out / "eval"
        eval_stats = run_tasks(eval_tasks, runner, label="synth-eval")
        finalize_folder(eval_dir, eval_stats)
        write_eval_metadata(eval_dir)
        result["eval"] = _totals(eval_stats)
    return result


def _eval_spec(spec: SynthSpec, eval_per_class: int) -> SynthSpec:
    return SynthSpec(
        samples=eval_per_class * len(CLASSNAMES), seed=spec.seed, image_size=spec.image_size,
        samples_per_shard=spec.samples_per_shard, quality=spec.quality,
        partial_rate=0.0, noise_rate=0.0, junk_rate=0.0,
    )


def run_chain(src: Path, dst: Path, stages: Sequence[Stage], runner: RunnerSpec, label: str) -> list[ShardStats]:
    """Run a stage chain over every shard of ``src`` into ``dst``, then write ``sizes.json``."""
    stats = run_tasks(plan_folder_tasks(Path(src), Path(dst), stages), runner, label=label)
    finalize_folder(Path(dst), stats)
    return stats


def _totals(stats: Sequence[ShardStats]) -> dict:
    by_status: dict[str, int] = {}
    for s in stats:
        for k, v in s.by_status.items():
            by_status[k] = by_status.get(k, 0) + v
    return {"shards": len(stats), "samples": sum(s.samples for s in stats), "written": sum(s.written for s in stats),
            "by_status": dict(sorted(by_status.items()))}
