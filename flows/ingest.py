"""Flows that bring data in: URL lists through img2dataset, local image folders, the split-view testbed.

Where the work runs (measured by ``benchmarks/bench_ingest.py`` on the shared 2-core machine, 2,000
URLs in parts of 500): the download is one call of ``img2dataset.download`` in this process, with
img2dataset's own worker processes and threads; the finalize step, one task per shard, runs on the
chosen runner (the Prefect flow on Dask by default). Against bare img2dataset on the same list that
path ran at 1.10x the URLs/s (0.97x by CPU time: plan 0.03 s and finalize 0.4 s against an 18 s
download). The alternative, one task per URL-list part calling ``img2dataset.download`` on it, ran at
0.37x even on warm workers: every call spawns a process pool and a logger process that import torch
(through webdataset) again; and on Dask it cannot run at all, since Dask's worker processes are
daemonic and may not have children.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.shards.fingerprint import dataset_fingerprint, with_fingerprints
from poisonlab.shards.ingest import IngestSpec, download_staging, ingest_job, prepare_ingest
from poisonlab.shards.layout import atomic_path, atomic_write_json, list_shards
from poisonlab.shards.local_import import ImportSpec, import_job, prepare_import
from poisonlab.shards.loopback import LoopbackServer
from poisonlab.shards.parts import PlanError
from poisonlab.shards.splitview import SplitViewWeb, evaluate_splitview


def ingest(spec: IngestSpec, runner: RunnerSpec, log: Path | None = None) -> dict[str, Any]:
    """URL list -> shards in ``spec.out``. img2dataset's output goes to stderr, or to ``log``."""
    plan = prepare_ingest(spec)  # a malformed URL list fails here, before any download
    download_staging(plan, log)
    return run_job(ingest_job(plan), runner, "ingest")


def import_folder(spec: ImportSpec, runner: RunnerSpec) -> dict[str, Any]:
    """Image folder (+ captions table or .txt files) -> shards in ``spec.out``."""
    return run_job(import_job(prepare_import(spec)), runner, "import")


def splitview_build(
    web: SplitViewWeb, out: Path, spec: IngestSpec, runner: RunnerSpec, log: Path | None = None
) -> dict[str, Any]:
    """Serve ``web`` on loopback, ingest its URL list into ``out/shards`` and score the result.

    Writes ``out/urls.parquet`` (the list as the curator made it, with the original hashes),
    ``out/manifest.parquet`` (the swapped URLs, with the key each got in the ingested shards and its
    status there; it records the fingerprint of ``out/shards``, so ``recall`` takes scores of those shards
    only) and ``out/report.json``.
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
    if list_shards(out / "shards"):
        manifest = with_fingerprints(manifest, [dataset_fingerprint(out / "shards")])
    write_table(manifest, out / "manifest.parquet")
    report = {**report, "verified": spec.verifies, "shards": str(out / "shards")}
    atomic_write_json(out / "report.json", report)
    return report


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
