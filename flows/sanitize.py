"""Sanitize flows: embed (one Prefect task per shard on Dask), scan (the global step), clean (one task per shard).

The Python API the CLI and experiments share::

    from poisonlab.flows.sanitize import embed_folder, scan_folder, clean_folder, recall_report
    store = embed_folder(shards, "emb", ModelSpec.from_run(run_dir), runner)["store"]
    scan_folder(store, {"kdist": {"k": 16}, "dao": {}, "clip_score": {}}, "scores")
    clean_folder(shards, "scores", {"name": "top_fraction", "detector": "kdist", "fraction": 0.02}, "clean", runner)
    recall_report("scores", "poisoned", out="recall")  # the folder, or poisoned/_run/manifest.parquet

Scanning runs in this process: one index over the whole dataset, searched with all the machine's cores;
under an index memory budget its index shards may instead be held by Dask workers (``flows/knn_dask.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from poisonlab.filters.decisions import Decision
from poisonlab.filters.metrics import recall_report
from poisonlab.filters.pipeline import clean_shards, embed_shards
from poisonlab.filters.scan import scan
from poisonlab.flows.runtime import RunnerSpec, job_runner
from poisonlab.models.zoo import ModelSpec

DetectorsArg = Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None


def embed_folder(shards: Path, out: Path, model: ModelSpec | None, runner: RunnerSpec | None = None, *,
                 batch_size: int = 256, dtype: str = "float32", device: str | None = None,
                 seed: int = 0, threads: int = 1, embedder: str = "open_clip") -> dict[str, Any]:
    """Embed every shard into ``out/<model_id>`` with a registered embedder (``name[:key=value,...]``;
    ``model`` for embedders that take one); returns the store path under ``"store"`` and the counts."""
    from poisonlab.filters.embed import EmbedConfig  # torch is only needed here

    runner = runner or RunnerSpec()
    config = EmbedConfig(model=model, batch_size=batch_size, dtype=dtype, device=device, seed=seed,  # type: ignore[arg-type]
                         threads=threads, embedder=embedder)
    return embed_shards(Path(shards), Path(out), config, job_runner(runner, "embed"))


def scan_folder(emb: Path | Mapping[str, Path], detectors: DetectorsArg, out: Path,
                overwrite: bool = False, index_memory: str | None = None,
                runner: RunnerSpec | None = None) -> dict[str, Any]:
    """Detectors (None: ``default``, the rate-free combination of ``filters/default.py``) over one store or
    ``{name: store}``; tables into ``out``.

    ``index_memory`` bounds each neighbour index per worker; when a cluster is asked for (``runner`` with a
    Dask address or workers) its index shards are held by the Dask workers, else searched in this process."""
    if index_memory is None or runner is None or not (runner.dask_address or runner.workers):
        return scan(emb, detectors, Path(out), overwrite=overwrite, index_memory=index_memory)
    from poisonlab.flows.knn_dask import shard_runner

    with shard_runner(runner, scratch=Path(out).resolve()) as shards:  # a folder the workers are told to write to
        return scan(emb, detectors, Path(out), overwrite=overwrite, index_memory=index_memory, shard_runner=shards)


def clean_folder(shards: Path, scores: Path, decision: Decision | Mapping[str, Any] | str, out: Path,
                 runner: RunnerSpec | None = None, excluded_out: Path | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Decide from the score tables; cleaned shards, ``_run/exclusions.parquet`` and ``clean.json`` into ``out``.
    Scores of another shard folder than ``shards`` are refused unless ``force``."""
    runner = runner or RunnerSpec()
    decision = decision if isinstance(decision, (Decision, str)) else dict(decision)
    return clean_shards(Path(shards), Path(scores), decision, Path(out), job_runner(runner, "clean"),
                        Path(excluded_out) if excluded_out is not None else None, force)


def sanitize(shards: Path, out: Path, model: ModelSpec | None, decision: Decision | Mapping[str, Any] | str,
             detectors: DetectorsArg = None, runner: RunnerSpec | None = None, keep_excluded: bool = False,
             *, excluded_out: Path | None = None, **embed_options: Any) -> dict[str, Any]:
    """All three steps: ``out/emb/<model_id>``, ``out/scores``, ``out/clean``; the excluded samples go to
    ``excluded_out`` when given (``keep_excluded``: to ``out/excluded``, as ``clean --excluded-out``)."""
    out = Path(out)
    if keep_excluded and excluded_out is None:
        excluded_out = out / "excluded"
    embedded = embed_folder(shards, out / "emb", model, runner, **embed_options)
    scanned = scan_folder(Path(embedded["store"]), detectors, out / "scores")
    cleaned = clean_folder(shards, out / "scores", decision, out / "clean", runner,
                           Path(excluded_out) if excluded_out is not None else None)
    return {"embed": embedded, "scan": scanned, "clean": cleaned}


# The names the experiments use.
clean = clean_folder

__all__ = ["clean", "clean_folder", "embed_folder", "recall_report", "sanitize", "scan", "scan_folder"]
