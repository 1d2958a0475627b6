"""Ingest throughput against bare img2dataset, on the same URL list from the same loopback server.

A loopback server in its own process serves generated 384 px JPEGs (distinct URLs). Each round runs,
interleaved so both see the same machine load:

* bare: ``img2dataset.download`` with the options ``poisonlab ingest`` passes it (same processes,
  threads, resize, hash);
* ingest: ``poisonlab ingest``'s whole path (check the list and write the plan, the same download into
  staging, one finalize task per shard that rewrites it as poisonlab shards with sidecars, stats and
  ``sizes.json``), with the in-process runner.

Rows (best of the rounds: the least disturbed by other processes sharing the machine):
* ingest vs bare URLs/s (floor 0.95: the wrapper adds nothing measurable), with the time split;
* the same runs by CPU time (this process and its reaped children: img2dataset's pool and logger; the
  server is not counted): work per URL, which other load on a shared machine disturbs far less;
* the same ingest with the Prefect flow on a local Dask cluster (its fixed start-up included, no floor);
* the alternative of one task per URL-list part, each calling ``img2dataset.download`` on its part, on
  as many warm worker processes (what one Dask task per part would run if Dask's daemonic workers could
  spawn img2dataset's pool and logger process; full mode only, no floor).

    .venv/bin/python benchmarks/run.py -k ingest
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from run import Row

from poisonlab.flows.runtime import RunnerSpec, run_job
from poisonlab.shards.ingest import (
    DownloadOptions,
    IngestSpec,
    download_staging,
    img2dataset_environment,
    ingest_job,
    prepare_ingest,
    redirect_output,
)
from poisonlab.shards.summary import summarize

PROCESSES = 2
THREADS = 16
SOURCE_SIZE = 384
DISTINCT_IMAGES = 64

_SERVER = """
import sys, time
from poisonlab.shards.loopback import LoopbackServer, Response
from poisonlab.shards.synth import SynthSpec, make_sample
spec = SynthSpec(samples={n}, image_size={size}, samples_per_shard={n}, seed=5)
bodies = [make_sample(spec, i).payload for i in range({n})]
def resolve(path):
    index = int(path.rsplit("/", 1)[-1].split(".")[0])
    return Response(bodies[index % len(bodies)], content_type="image/jpeg")
with LoopbackServer(resolve) as server:
    print(server.port, flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
"""


class _Server:
    """The image server in a child process, so its work does not share the benchmark's interpreter."""

    def __enter__(self) -> _Server:
        code = _SERVER.format(n=DISTINCT_IMAGES, size=SOURCE_SIZE)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)


def _options() -> DownloadOptions:
    return DownloadOptions(image_size=256, processes=PROCESSES, threads=THREADS, timeout=10)


def _cpu() -> float:
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _bare(urls: Path, out: Path, per_shard: int, log: Path) -> None:
    with img2dataset_environment(_options().max_pixels):
        from img2dataset import download

        with redirect_output(log):
            download(url_list=str(urls), output_folder=str(out), input_format="parquet", caption_col="caption",
                     number_sample_per_shard=per_shard, compute_hash="sha256", **_options().img2dataset_kwargs())


def _ingest(urls: Path, out: Path, per_shard: int, log: Path, runner: RunnerSpec) -> dict[str, float]:
    """The steps of ``flows.ingest.ingest``, timed one by one."""
    times = {}
    start = time.perf_counter()
    plan = prepare_ingest(IngestSpec(urls=urls, out=out, download=_options(), samples_per_shard=per_shard))
    times["plan"] = time.perf_counter() - start
    download_staging(plan, log)
    times["download"] = time.perf_counter() - start - times["plan"]
    run_job(ingest_job(plan), runner, "bench-ingest")
    times["total"] = time.perf_counter() - start
    times["finalize"] = times["total"] - times["plan"] - times["download"]
    return times


_PART_WORKER = """
import json, os, sys
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
from img2dataset import download
kwargs = json.loads(sys.argv[1])
for part, out in zip(sys.argv[2::2], sys.argv[3::2]):
    download(url_list=part, output_folder=out, input_format="parquet", caption_col="caption", **kwargs)
"""


def _per_part(urls: Path, root: Path, per_shard: int, log: Path, n: int) -> float:
    """One ``img2dataset.download`` per part on ``PROCESSES`` warm workers (img2dataset imported once
    each, as on a Dask worker), parts dealt round-robin: what one task per URL-list part would run."""
    table = pq.read_table(urls)
    root.mkdir()
    jobs: list[list[str]] = [[] for _ in range(PROCESSES)]
    for i, offset in enumerate(range(0, n, per_shard)):
        part = root / f"part{i:05d}.parquet"
        pq.write_table(table.slice(offset, per_shard), part)
        jobs[i % PROCESSES] += [str(part), str(root / f"out{i:05d}")]
    kwargs = _options().img2dataset_kwargs() | {"processes_count": 1, "number_sample_per_shard": per_shard,
                                                "compute_hash": "sha256"}
    kwargs["max_image_area"] = float(kwargs["max_image_area"])
    start = time.perf_counter()
    with open(log, "ab") as sink, img2dataset_environment(_options().max_pixels):
        workers = [subprocess.Popen([sys.executable, "-c", _PART_WORKER, json.dumps(kwargs), *job],
                                    stdout=sink, stderr=sink) for job in jobs if job]
        if any(w.wait() != 0 for w in workers):
            raise RuntimeError(f"a per-part worker failed; see {log}")
    return time.perf_counter() - start


def run(quick: bool) -> list[Row]:
    n, per_shard, rounds = (600, 200, 2) if quick else (2000, 500, 4)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, _Server() as server:
        root = Path(tmp)
        urls = root / "urls.parquet"
        pq.write_table(pa.table({"url": [f"http://127.0.0.1:{server.port}/img/{i}.jpg" for i in range(n)],
                                 "caption": [f"a generated picture number {i}" for i in range(n)]}), urls)
        log = root / "img2dataset.log"
        bare, ours, split = [], [], []
        cpu: dict[str, list[float]] = {"bare": [], "ingest": []}
        for r in range(rounds):
            for name in ("bare", "ingest") if r % 2 == 0 else ("ingest", "bare"):
                out = root / f"{name}{r}"
                cpu_start = _cpu()
                if name == "bare":
                    start = time.perf_counter()
                    _bare(urls, out, per_shard, log)
                    bare.append(time.perf_counter() - start)
                else:
                    split.append(_ingest(urls, out, per_shard, log, RunnerSpec(executor="local", progress=False)))
                    ours.append(split[-1]["total"])
                cpu[name].append(_cpu() - cpu_start)
                assert summarize(out)["live"] == n, "the benchmark server must serve every URL"
                shutil.rmtree(out)
        best = split[ours.index(min(ours))]
        rows.append(Row(
            name=f"ingest {n} URLs vs bare img2dataset", value=n / min(ours), unit="URLs/s",
            baseline=n / min(bare), baseline_name="img2dataset.download", floor=0.95,
            note=f"{PROCESSES} processes x {THREADS} threads; best of {rounds}: plan {best['plan']:.2f}s, "
                 f"download {best['download']:.1f}s, finalize {best['finalize']:.2f}s",
        ))
        rows.append(Row(
            name=f"ingest {n} URLs vs bare img2dataset, CPU", value=1000 * min(cpu["ingest"]) / n,
            unit="CPU s/1k URLs", baseline=1000 * min(cpu["bare"]) / n, baseline_name="img2dataset.download",
            higher_is_better=False, floor=0.95, note="this process and its reaped children (pool, logger)",
        ))
        prefect_times = _ingest(urls, root / "prefect", per_shard, log,
                                RunnerSpec(executor="prefect", workers=PROCESSES, progress=False))
        rows.append(Row(
            name=f"ingest {n} URLs, Prefect flow on Dask", value=n / prefect_times["total"], unit="URLs/s",
            baseline=n / min(bare), baseline_name="img2dataset.download",
            note=f"finalize {prefect_times['finalize']:.1f}s: Prefect server and Dask cluster start included",
        ))
        if not quick:
            seconds = _per_part(urls, root / "parts", per_shard, log, n)
            rows.append(Row(
                name=f"one img2dataset.download per part ({n // per_shard} parts)", value=n / seconds,
                unit="URLs/s", baseline=n / min(bare), baseline_name="img2dataset.download (its own pool)",
                note=f"{PROCESSES} warm workers, one part at a time each: every call spawns a pool and a logger",
            ))
    return rows
