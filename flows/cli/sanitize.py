"""Sanitize commands: ``embed``, ``scan``, ``clean``, ``sanitize`` (all three) and ``recall``."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from poisonlab.filters.embedders import DEFAULT_EMBEDDER, embedder_for, needs_model
from poisonlab.filters.metrics import BUDGETS, ROC_SCALES
from poisonlab.filters.specs import SpecError
from poisonlab.filters.store import STORE_DTYPES, EmbeddingMismatchError
from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import (
    NO_INPUT,
    JsonOpt,
    RunOptions,
    app,
    choice,
    emit,
    fail,
    runner_spec,
    with_input,
    with_run_options,
)
from poisonlab.flows.cli.paths import absolute_if_file
from poisonlab.pipelines.registry import RegistryError
from poisonlab.shards.fingerprint import DatasetMismatchError

# Raised while validating and planning, before any shard is written: reported as a one-line error
# (CheckpointError, a refused or mismatched checkpoint, is a ValueError).
INPUT_ERRORS = (RegistryError, SpecError, EmbeddingMismatchError, DatasetMismatchError, FileNotFoundError,
                FileExistsError, ValueError, KeyError)

ArchOpt = typer.Option(None, "--arch", "--model", help="open_clip architecture, a shipped config (poisonlab-tiny-32) "
                       "or a JSON file")
WeightsOpt = typer.Option(None, "--weights", "--pretrained", help="open_clip pretrained tag, .safetensors or "
                          "weights-only .pt file")
EmbedderOpt = typer.Option(None, "--embedder", help="name[:key=value,...] of a registered embedder (default: the one "
                           "--run records, e.g. graph_clip, else open_clip, which takes --arch/--weights/--run); see "
                           "`poisonlab components embedder`")
RunOpt = typer.Option(None, "--run", help="a poisonlab training run folder (model.safetensors + model_config.json)")
DetectorOpt = typer.Option(None, "--detector", metavar="<spec>", help="[column=]name[:key=value,...], one detector per "
                           "--detector, repeatable: --detector knn50=kdist:k=50 --detector dao:k=50 --detector "
                           "both=ensemble:detectors=[knn50;dao]. Values are YAML, a list is [a;b], a dotted key sets a "
                           "nested parameter (index.kind=exact); a JSON object or @file.yaml works too. Default: "
                           "default (kdist_subsets, phrase_burst and kdist at k=16, rank-max combined: needs no knowledge of the "
                           "attack or its rate); "
                           "see `poisonlab components detector`")
ForceOpt = typer.Option(False, "--force", help="combine outputs that describe different shard folders "
                        "(by default refused: scores, manifests and exclusions record the fingerprint of their shards)")
DecisionOpt = typer.Option(..., "--decision", metavar="<spec>", help="name:key=value,... as for --detector, e.g. "
                           "top_fraction:detector=kdist,fraction=0.02 or threshold:detector=clip_score,value=0.8, "
                           "or a JSON object / @file (rules); see `poisonlab components decision`")
SANITIZE_DECISION = "top_fraction:detector=default,fraction=0.02"
SanitizeDecisionOpt = typer.Option(SANITIZE_DECISION, "--decision", metavar="<spec>", help="as for `clean --decision`; "
                                   "the default removes the top 2% by the default detector")
ExcludedOutOpt = typer.Option(None, "--excluded-out", help="also write the excluded samples here, as shards")
StoreDtype = choice(STORE_DTYPES)
RocScale = choice(ROC_SCALES)


def _warn(result: dict) -> None:
    """Warnings a step returned (an old output without a fingerprint, a forced mix), one line each on stderr."""
    for line in result.get("warnings") or []:
        typer.echo(f"warning: {line}", err=True)


@contextmanager
def _input_errors():  # type: ignore[no-untyped-def]
    try:
        yield
    except INPUT_ERRORS as exc:
        fail(str(exc).strip("'\""))


def _model(arch: str | None, weights: str | None, run: Path | None,  # type: ignore[no-untyped-def]
           embedder: str = DEFAULT_EMBEDDER):
    from poisonlab.models.zoo import ModelSpec  # torch and open_clip load only for commands that need them

    if run is not None:
        if arch or weights:
            raise ValueError("--run names the architecture and weights; do not combine it with --arch/--weights")
        return ModelSpec.from_run(run)
    if arch is None:
        if needs_model(embedder):
            raise ValueError("give --arch ARCH (and --weights) or --run RUN_DIR")
        if weights:
            raise ValueError("--weights needs --arch")
        return None
    return ModelSpec(arch=absolute_if_file(arch), weights=absolute_if_file(weights))  # type: ignore[arg-type]


def _stores(primary: Path, extra: list[str]) -> dict[str, Path] | Path:
    if not extra:
        return primary
    stores: dict[str, Path] = {"model": primary}
    for item in extra:
        name, eq, path = item.partition("=")
        if not eq or not name:
            raise ValueError(f"--embeddings expects NAME=STORE, got {item!r}")
        stores[name] = Path(path)
    return stores


@app.command()
@with_run_options
@with_input("shards", "shard folder")
def embed(
    shards: Path = NO_INPUT,
    out: Path = typer.Option(..., "--out", help="embedding root: the store goes to OUT/<model_id>"),
    arch: str | None = ArchOpt,
    weights: str | None = WeightsOpt,
    run: Path | None = RunOpt,
    embedder: str | None = EmbedderOpt,
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    dtype: StoreDtype = typer.Option("float32", "--dtype", help="storage dtype of the embeddings"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda when available)"),
    seed: int = typer.Option(0, "--seed", help="initialisation of random weights"),
    options: RunOptions = RunOptions(),
) -> None:
    """Embed every sample with a registered embedder (open_clip: images and captions; one task per shard;
    reruns skip done shards)."""
    from poisonlab.flows.sanitize import embed_folder

    outputs.guard(out, "embeddings", shards)
    with _input_errors():
        embedder = embedder_for(run, embedder)
        result = embed_folder(shards, out, _model(arch, weights, run, embedder), options.runner,
                              batch_size=batch_size, dtype=dtype, device=device, seed=seed, embedder=embedder)
    outputs.done(out, "embeddings")
    options.emit(result, f"embedded {result['written']} of {result['samples']} samples from {result['shards']} shards "
                          f"-> {result['store']}" + "".join(f"\n  {k}: {v}" for k, v in result["reasons"].items()))


@app.command()
@with_input("store", "embedding store (OUT/<model_id> of `poisonlab embed`)")
def scan(
    store: Path = NO_INPUT,
    out: Path = typer.Option(..., "--out", help="folder for the score tables"),
    detector: list[str] | None = DetectorOpt,
    embeddings: list[str] | None = typer.Option(
        None, "--embeddings", help="NAME=STORE: another model's store for detectors with embeddings=NAME"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a scan with other settings in OUT"),
    index_memory: str | None = typer.Option(
        None, "--index-memory", help="memory budget of one worker's neighbour index (e.g. 4GiB): codes chosen to fit "
        "it (flat, SQ8, PQ), split into index shards when they do not"),
    dask_address: str | None = typer.Option(
        None, "--dask-address", help="with --index-memory: index shards held by this Dask cluster's workers"),
    dask_scheduler_file: Path | None = typer.Option(None, "--dask-scheduler-file", help="as --dask-address, by file"),
    workers: int | None = typer.Option(None, "--workers", help="with --index-memory: index shards on local Dask workers"),
    as_json: bool = JsonOpt,
) -> None:
    """Score every sample with detectors over the whole dataset (one FAISS index, or index shards under
    --index-memory); one table per shard.

    Scoring runs in this process (a kNN index sees every sample at once), so scan takes no executor; only
    index shards (--index-memory) may be held by Dask workers. Example:
    poisonlab scan --in emb/MODEL --out scores --detector kdist:k=50 --detector dao"""
    from poisonlab.flows.sanitize import scan_folder

    outputs.guard(out, "scores", store, *[Path(e.partition("=")[2]) for e in embeddings or []])
    runner = runner_spec("auto", dask_address, workers, progress=False, dask_scheduler_file=dask_scheduler_file)
    with _input_errors():
        result = scan_folder(_stores(store, embeddings or []), detector or None, out, overwrite=overwrite,
                             index_memory=index_memory, runner=runner)
    outputs.done(out, "scores")
    lines = [f"scored {result['samples']} samples ({result['live']} live) in {result['shards']} shards -> {out}"
             + (" (already done)" if result.get("skipped") else "")]
    lines += [f"  {name}: {sec:.1f} s" for name, sec in result["seconds"].items()]
    emit(result, as_json, "\n".join(lines))


def _clean_summary(result: dict) -> str:
    lines = [f"excluded {result['excluded']} of {result['live']} live samples -> {result['out']} "
             f"(exclusions: {result['exclusions']})"]
    lines += [f"  {rule}: {n}" for rule, n in result["by_rule"].items()]
    return "\n".join(lines)


@app.command()
@with_run_options
@with_input("shards", "the shard folder that was embedded and scanned")
def clean(
    shards: Path = NO_INPUT,
    scores: Path = typer.Option(..., "--scores", help="score tables of `poisonlab scan`"),
    decision: str = DecisionOpt,
    out: Path = typer.Option(..., "--out", help="folder for the cleaned shards and _run/exclusions.parquet"),
    excluded_out: Path | None = ExcludedOutOpt,
    force: bool = ForceOpt,
    options: RunOptions = RunOptions(),
) -> None:
    """Apply a decision to the scores: cleaned shards (kept samples byte-identical) and an exclusion table.

    The scores must have been computed on the --in folder itself (the folder embedded and scanned: a poisoned copy
    is another folder than its source); scores of another folder are refused unless --force."""
    from poisonlab.flows.sanitize import clean_folder

    outputs.guard(out, "cleaned", shards, scores, excluded_out)
    outputs.guard(excluded_out, "shards", shards, scores, out)

    with _input_errors():
        result = clean_folder(shards, scores, decision, out, options.runner,
                              excluded_out, force)
    _warn(result)
    outputs.done(out, "cleaned")
    outputs.done(excluded_out, "shards")
    options.emit(result, _clean_summary(result))


@app.command()
@with_run_options
@with_input("shards", "shard folder")
def sanitize(
    shards: Path = NO_INPUT,
    out: Path = typer.Option(..., "--out", help="OUT/emb, OUT/scores, OUT/clean"),
    decision: str = SanitizeDecisionOpt,
    arch: str | None = ArchOpt,
    weights: str | None = WeightsOpt,
    run: Path | None = RunOpt,
    embedder: str | None = EmbedderOpt,
    detector: list[str] | None = DetectorOpt,
    excluded_out: Path | None = ExcludedOutOpt,
    keep_excluded: bool = typer.Option(False, "--keep-excluded", hidden=True,
                                       help="the old spelling of --excluded-out OUT/excluded"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    options: RunOptions = RunOptions(),
) -> None:
    """Embed, scan and clean in one go."""
    from poisonlab.flows.sanitize import sanitize as run_sanitize

    if keep_excluded and excluded_out is not None:
        fail("--keep-excluded is the old spelling of --excluded-out OUT/excluded; give one")
    excluded_out = out / "excluded" if keep_excluded else excluded_out
    outputs.guard(out, "sanitize", shards)
    parts = {out / "emb": "embeddings", out / "scores": "scores", out / "clean": "cleaned"}
    for folder, kind in parts.items():
        outputs.guard(folder, kind, shards)
    outputs.guard(excluded_out, "shards", shards, out / "clean")
    out.mkdir(parents=True, exist_ok=True)
    outputs.done(out, "sanitize")  # a folder of folders: recorded first, so a killed run resumes

    with _input_errors():
        embedder = embedder_for(run, embedder)
        result = run_sanitize(shards, out, _model(arch, weights, run, embedder), decision, detector or None,
                              options.runner, excluded_out=excluded_out, batch_size=batch_size, embedder=embedder)
    for folder, kind in parts.items():
        outputs.done(folder, kind)
    outputs.done(excluded_out, "shards")
    options.emit(result, f"embeddings: {result['embed']['store']}\nscores: {result['scan']['out']}\n"
                          + _clean_summary(result["clean"]))


@app.command()
def recall(
    scores: Path = typer.Option(..., "--scores", help="score tables of `poisonlab scan`, or a federated run "
                                "(OUT/runs/AGGREGATOR) for its client inspection"),
    manifest: Path = typer.Option(..., "--manifest", help="the poisoned folder, or its manifest table "
                                  "(POISONED/_run/manifest.parquet: key, attack_id, attack, ...); for a "
                                  "federated run, the experiment's clients.json (or OUT)"),
    out: Path | None = typer.Option(None, "--out", help="folder for recall.md, recall.json and curves (default SCORES/recall)"),
    budgets: str = typer.Option(",".join(map(str, BUDGETS)), "--budgets", help="removal budgets as fractions, "
                                "comma-separated (0.02 is the 2% budget `clean` and the demo use)"),
    roc_scale: RocScale = typer.Option(ROC_SCALES[0], "--roc-scale", help="false positive rate axis of the ROC plots "
                                       "(log shows the low rates that removal budgets live in)"),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Filter recall per detector and per attack id of the recipe: AUROC, PR-AUC, FPR@95%TPR, recall and
    precision at each removal budget.

    The scores must have been computed on the poisoned folder the manifest was written for (the manifest
    records its fingerprint); scores of another folder are refused unless --force.

    A federated run (OUT/runs/AGGREGATOR of `federate train`) with the experiment's malicious-client
    manifest (OUT/clients.json) measures client inspection instead: one row per (client, round)."""
    from poisonlab.federated.inspection_scores import inspection_recall, is_inspected_run
    from poisonlab.filters.metrics import markdown_summary, parse_budgets, recall_report

    out = out or Path(scores) / "recall"
    outputs.guard(out, "recall", scores, manifest)
    measure = inspection_recall if is_inspected_run(scores) else recall_report
    with _input_errors():
        result = measure(scores, manifest, out=out, budgets=parse_budgets(budgets), force=force,
                         roc_scale=roc_scale)
    _warn(result)
    outputs.done(out, "recall")
    emit(result, as_json, markdown_summary(result) + f"\n\ncurves and tables in {Path(result['files']['json']).parent}")
