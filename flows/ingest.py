"""Flows that bring data in: URL lists through img2dataset, local image folders, the split-view testbed.

Where the work runs (measured in ``benchmarks/bench_ingest.py``): the download is one call of
``img2dataset.download`` in this process, with img2dataset's own worker processes and threads; the
finalize step, one task per shard, runs on the chosen runner (the Prefect flow on Dask by default).
One Dask task per URL-list part calling ``img2dataset.download`` does not work: Dask's worker processes
are daemonic and img2dataset spawns a process pool and a logger process per call, and outside Dask
that per-call start (each child imports torch through webdataset) costs seconds per part.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from poisonlab.flows.runtime import RunnerSpec, run_tasks
from poisonlab.shards.ingest import (
    IngestSpec,
    download_staging,
    finish_ingest,
    plan_ingest_tasks,
    prepare_ingest,
)
from poisonlab.shards.layout import atomic_write_json
from poisonlab.shards.local_import import ImportSpec, finish_import, plan_import_tasks, prepare_import
from poisonlab.shards.loopback import LoopbackServer
from poisonlab.shards.parts import PlanError
from poisonlab.shards.splitview import SplitViewWeb, evaluate_splitview


def ingest(spec: IngestSpec, runner: RunnerSpec, log: Path | None = None) -> dict[str, Any]:
    """URL list -> shards in ``spec.out``. img2dataset's output goes to stderr, or to ``log``."""
    plan = prepare_ingest(spec)  # a malformed URL list fails here, before any download
    download_staging(plan, log)
    stats = run_tasks(plan_ingest_tasks(plan), runner, label="ingest")
    return finish_ingest(plan, stats)


def import_folder(spec: ImportSpec, runner: RunnerSpec) -> dict[str, Any]:
    """Image folder (+ captions table or .txt files) -> shards in ``spec.out``."""
    plan = prepare_import(spec)
    stats = run_tasks(plan_import_tasks(plan), runner, label="import")
    return finish_import(plan, stats)


def splitview_build(
    web: SplitViewWeb, out: Path, spec: IngestSpec, runner: RunnerSpec, log: Path | None = None
) -> dict[str, Any]:
    """Serve ``web`` on loopback, ingest its URL list into ``out/shards`` and score the result.

    Writes ``out/urls.parquet`` (the list as the curator made it, with the original hashes),
    ``out/manifest.parquet`` (the swapped URLs, with the key each got in the ingested shards and its
    status there) and ``out/report.json``.
    """
    out = Path(out)
    if (out / "shards").exists():  # the URL list names this run's port: a rerun is a new ingest
        raise PlanError(f"{out / 'shards'} exists; build the split-view dataset into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    with LoopbackServer(web.resolve) as server:
        base = server.url("")
        urls = web.url_table(base)
        write_table(urls, out / "urls.parquet")
        spec = dataclasses.replace(spec, urls=out / "urls.parquet", out=out / "shards")
        ingest(spec, runner, log)
    report, manifest = evaluate_splitview(out / "shards", urls, web.manifest(base), spec.verifies, spec.columns.hash_type)
    write_table(manifest, out / "manifest.parquet")
    report = {**report, "verified": spec.verifies, "shards": str(out / "shards")}
    atomic_write_json(out / "report.json", report)
    return report


def write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
