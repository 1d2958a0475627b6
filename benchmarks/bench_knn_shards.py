"""Memory-bounded kNN scoring: one index in one process vs index shards under a memory budget.

k=16 neighbours of every one of N generated 512-d vectors (200k; 20k with ``--quick``; ``KNN_SHARDS_N``
overrides, e.g. 1000000), then kdist, SLOF, DAO and LID from the graph, three ways, each in a child process
so that its peak resident memory is its own:

* ``single``: the vectors loaded into the process and one index over them (the automatic IVF, as
  ``bench_filters``);
* ``sharded, 2 Dask workers``: the budget (``budget_fraction`` of the one-shard estimate of the same
  SQ8 codes, so that they need 2 index shards) chosen by ``filters/budget.py``; the driver never loads
  the vectors (a memory-mapped ``.npy`` that both workers read), each worker builds and holds one shard,
  the driver merges per-shard top-k block by block. Peak RSS reported for the driver and each worker;
* ``sharded, in-process``: the same shards one after another in one process.

Recall@16 of each against exact search on 1,000 keyed queries.

    .venv/bin/python benchmarks/run.py -k knn_shards [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 16
BUDGET_FRACTION = 0.6  # of the one-shard SQ8 estimate: two index shards


def _peak_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry over the parent's peak, which
    Linux keeps across fork and exec: the runner's generated vectors would be counted in every child)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _scores(dist: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    from poisonlab.filters.outliers import dao, k_distance, lid_mle, slof

    kd, lid = k_distance(dist, K), lid_mle(dist, K)
    return {"kdist": kd, "slof": slof(dist, ids, K, kd), "dao": dao(dist, ids, K, kd, lid), "lid": lid}


def _recall(path: str, ids: np.ndarray) -> float:
    from poisonlab.filters.sharded_knn import sampled_recall
    from poisonlab.filters.vectors import NpySource

    return sampled_recall(NpySource(path), ids, 1000, 7)


def _budget(n: int, dim: int) -> int:
    from poisonlab.filters.budget import estimate_bytes

    return int(BUDGET_FRACTION * estimate_bytes("sq8", n, dim, 64, 0, False))


def _single(path: str) -> dict:
    from poisonlab.filters.index import IndexParams, self_knn

    start, cpu = time.perf_counter(), _cpu_seconds()
    result = self_knn(np.load(path), K, IndexParams(check_queries=0))
    _scores(result.dist, result.ids)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {"seconds": seconds, "cpu": cpu, "driver_mib": _peak_mib(), "index": result.kind,
            "recall": _recall(path, result.ids)}


def _sharded(path: str, workers: int) -> dict:
    from poisonlab.filters.index import IndexParams, budget_knn
    from poisonlab.filters.vectors import NpySource

    source = NpySource(path)
    params = IndexParams(memory=str(_budget(len(source), source.dim)), codes="sq8", check_queries=0)
    if workers == 0:
        start, cpu = time.perf_counter(), _cpu_seconds()
        result = budget_knn(source, K, params)
        _scores(result.dist, result.ids)
        return {"seconds": time.perf_counter() - start, "cpu": _cpu_seconds() - cpu, "driver_mib": _peak_mib(),
                "plan": result.plan, "recall": _recall(path, result.ids)}
    from distributed import Client, LocalCluster

    from poisonlab.flows.knn_dask import DaskShards

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("poisonlab.filters.index_shard"))  # imports before the clock starts
        before = sum(client.run(_cpu_seconds).values()) + _cpu_seconds()
        start = time.perf_counter()
        result = budget_knn(source, K, params, runner=DaskShards(client))
        _scores(result.dist, result.ids)
        seconds = time.perf_counter() - start
        cpu = sum(client.run(_cpu_seconds).values()) + _cpu_seconds() - before
        worker_mib = list(client.run(_peak_mib).values())
    return {"seconds": seconds, "cpu": cpu, "driver_mib": _peak_mib(), "worker_mib": worker_mib,
            "plan": result.plan, "recall": _recall(path, result.ids)}


def child(mode: str, path: str) -> dict:
    from poisonlab.filters.index import self_knn  # noqa: F401 - imports before the clock starts

    if mode == "single":
        return _single(path)
    return _sharded(path, int(mode.removeprefix("sharded")))


def _run_child(mode: str, path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kNN child {mode} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n: int) -> dict[str, dict]:
    from poisonlab.filters.synthetic import PlantedSpec, planted_embeddings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vectors.npy"
        np.save(path, planted_embeddings(PlantedSpec(n=n, dim=512, sparse_points=n // 1000, seed=1)).vectors)
        return {mode: _run_child(mode, path) for mode in ("single", "sharded2", "sharded0")}


def rows_of(n: int, results: dict[str, dict]) -> list:
    from run import Row

    label = f"{n // 1000}k" if n < 1_000_000 else f"{n / 1_000_000:g}M"
    single, dask, seq = results["single"], results["sharded2"], results["sharded0"]
    plan = dask["plan"]
    largest = max([dask["driver_mib"], *dask["worker_mib"]])
    where = (f"{plan['shards']} shards of {plan['codes']} ({plan['rows_per_shard']:,} rows, "
             f"{plan['memory_per_shard_text']} each, budget {plan['budget_text']}, refine from {plan['refine']})")
    return [
        Row(f"knn shards: {label} x 512 wall, 2 Dask workers vs single index", dask["seconds"], "s", single["seconds"],
            f"single {single['index']} index", higher_is_better=False,
            note=f"{where}; recall@16 {dask['recall']:.3f} vs {single['recall']:.3f}; "
                 f"CPU-s {dask['cpu']:.0f} (driver + workers) vs {single['cpu']:.0f}"),
        Row(f"knn shards: {label} x 512 largest process peak RSS, 2 Dask workers", largest, "MiB",
            single["driver_mib"], "single index process", higher_is_better=False,
            note=f"driver {dask['driver_mib']:,.0f} MiB, workers " + ", ".join(f"{w:,.0f}" for w in dask["worker_mib"])
            + " MiB (VmHWM); the driver never loads the vectors"),
        Row(f"knn shards: {label} x 512 wall, shards in-process vs single index", seq["seconds"], "s",
            single["seconds"], f"single {single['index']} index", higher_is_better=False,
            note=f"peak RSS {seq['driver_mib']:,.0f} MiB vs {single['driver_mib']:,.0f} MiB; recall@16 {seq['recall']:.3f}; "
                 f"CPU-s {seq['cpu']:.0f} vs {single['cpu']:.0f}"),
    ]


def run(quick: bool) -> list:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n = int(os.environ.get("KNN_SHARDS_N", 20_000 if quick else 200_000))
    return rows_of(n, measure(n))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps(child(sys.argv[2], sys.argv[3])))
