"""Dataset commands: ``synth``, ``stats``, ``components``."""

from __future__ import annotations

from pathlib import Path

import typer

from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import (
    NO_INPUT,
    JsonOpt,
    OverwriteOpt,
    RunOptions,
    app,
    emit,
    fail,
    with_input,
    with_run_options,
)
from poisonlab.flows.datasets import GENERATORS, SynthRequest
from poisonlab.pipelines.registry import list_registries
from poisonlab.shards.markers import MarkerConflict
from poisonlab.shards.summary import summarize


@app.command()
@with_run_options
def synth(
    out: Path = typer.Option(..., "--out", help="folder for the shards (the eval split goes to OUT/eval)"),
    samples: int = typer.Option(20000, "--samples", min=1),
    seed: int = typer.Option(0, "--seed"),
    image_size: int = typer.Option(32, "--image-size", min=8, max=1024),
    samples_per_shard: int = typer.Option(1000, "--samples-per-shard", min=1),
    eval_per_class: int = typer.Option(50, "--eval-per-class", min=0, help="evaluation samples per class"),
    modality: str = typer.Option("image", "--modality",
                                 help=f"what to generate: {', '.join(GENERATORS)} (graphs: motifs in random graphs)"),
    overwrite: bool = OverwriteOpt,
    options: RunOptions = RunOptions(),
) -> None:
    """Generate a built-in dataset (coloured shapes with captions, or motif graphs with descriptions) and
    its labelled eval split."""
    if modality not in GENERATORS:
        fail(f"unknown modality {modality!r} for synth; choose one of {', '.join(GENERATORS)}")
    request = SynthRequest(out, samples, seed, samples_per_shard, eval_per_class, image_size)
    outputs.guard(out, "shards")
    try:
        result = GENERATORS[modality](request, options.runner, overwrite)
    except MarkerConflict as exc:
        fail(str(exc))
    outputs.done(out, "shards")
    options.emit(result, f"wrote {result['train']['written']} samples in {result['train']['shards']} shards to {out}")


@app.command()
@with_input("directory", "a shard folder")
def stats(
    directory: Path = NO_INPUT,
    as_json: bool = JsonOpt,
    strict: bool = typer.Option(False, "--strict", help="exit 1 when any shard has a problem"),
    check_tars: bool = typer.Option(True, "--check-tars/--no-check-tars",
                                    help="read tar headers to compare them with the sidecars"),
) -> None:
    """Counts per shard and in total by status from the sidecars, and every shard whose files disagree."""
    try:
        summary = summarize(directory, check_tars=check_tars)
    except FileNotFoundError as exc:
        fail(str(exc))
    lines = [f"{summary['samples']} samples in {summary['shards']} shards: "
             + ", ".join(f"{k}={v}" for k, v in summary["by_status"].items())]
    lines += [f"  {k}: {v}" for k, v in summary["reasons"].items()]
    if summary.get("hash_mismatch"):
        lines.append(f"hash mismatch rate: {summary['hash_mismatch_rate']:.2%} in total; per shard: "
                     + ", ".join(f"{k} {v['hash_mismatch_rate']:.2%}" for k, v in summary["per_shard"].items()))
    if summary["problems"]:
        lines.append(f"warning: {len(summary['problems'])} shards have problems; the counts above may be wrong:")
        lines += [f"  {shard}: {problem}" for shard, problems in summary["problems"].items() for problem in problems]
    emit(summary, as_json, "\n".join(lines))
    if strict and summary["problems"]:
        raise typer.Exit(code=1)


@app.command()
def components(
    kind: str | None = typer.Argument(None, help="only this kind (attack, detector, stage, ...)"),
    as_json: bool = JsonOpt,
) -> None:
    """List the registered components with their parameters."""
    registries = list_registries()
    if kind is not None and kind not in registries:
        fail(f"unknown kind {kind!r}; known: {', '.join(registries)}")
    selected = {k: [c.describe() for c in r] for k, r in registries.items() if kind in (None, k)}
    lines = []
    for k, comps in selected.items():
        lines.append(f"{k}:")
        for c in comps:
            params = ", ".join(f"{n}={p['default']!r}" if not p["required"] else f"{n} (required)"
                               for n, p in c["params"].items())
            lines.append(f"  {c['name']:<20} {c['summary']}" + (f"\n  {'':<20} [{params}]" if params else ""))
    emit(selected, as_json, "\n".join(lines))
