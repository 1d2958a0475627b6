"""``poisonlab demo``: generate the built-in data and run every available stage end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from poisonlab.flows.cli.app import DaskAddressOpt, ExecutorOpt, JsonOpt, WorkersOpt, app, emit, runner_spec
from poisonlab.flows.datasets import run_chain, synth_dataset
from poisonlab.pipelines.registry import get_registry, load_plugins
from poisonlab.shards.summary import summarize
from poisonlab.shards.synth import SynthSpec


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out"),
    samples: int = typer.Option(4000, "--samples", min=100),
    seed: int = typer.Option(0, "--seed"),
    executor: str = ExecutorOpt,
    dask_address: str | None = DaskAddressOpt,
    workers: int | None = WorkersOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Generate data and run the pipeline's stages on it (grows as stages land)."""
    load_plugins()
    runner = runner_spec(executor, dask_address, workers, not as_json)
    data = out / "data"
    synth_dataset(data, SynthSpec(samples=samples, seed=seed, samples_per_shard=1000), 20, runner)
    validate = get_registry("stage").create("validate_images")
    run_chain(data, out / "validated", [validate], runner, label="validate")
    summary = summarize(out / "validated")
    emit(summary, as_json, f"demo: {summary['samples']} samples validated: {summary['by_status']} (outputs in {out})")
