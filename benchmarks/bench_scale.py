"""The whole chain at scale: synth -> poison (badnets at 0.1 %) -> embed -> scan -> clean -> recall on N pairs.

Every stage runs as the command a user types (a fresh process), so a row holds all of its cost: start-up,
planning, shard I/O, sidecars, manifests. A sampler polls the stage's process tree every 0.2 s and keeps the
peak resident memory of the driver (the command) and of each child (Dask workers, DataLoader workers).
The embedding model is a reference victim: a tiny CLIP trained for 3 epochs on its own ``--train-samples``
generated pairs poisoned with the same attack (timed in rows of their own; not stages of sanitizing), unless
``--model RUN`` names one. The filter is the
default detector (the scan's own), scored against the manifest by ``recall``.

    .venv/bin/python benchmarks/run.py -k scale --samples 100000
    .venv/bin/python benchmarks/bench_scale.py --samples 1000000 --out /data/scale --model runs/victim

Rows report samples/s and peak RSS; the "ratio" of a row is its rate against the synth stage's rate in the
same run (how much slower than writing the shards in the first place each stage is).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from run import Row, format_table  # noqa: E402

POISONLAB = [str(Path(sys.executable).parent / "poisonlab")]
RATE = 0.001
TARGET = "red circle"


@dataclasses.dataclass
class StageRun:
    """What one command cost: wall seconds, peak RSS of the command and of its largest child, and its output."""

    name: str
    seconds: float
    driver_rss: int
    worker_rss: int
    workers: int
    output: str


class TreeSampler(threading.Thread):
    """Peak RSS per process of one process tree, polled until ``stop``."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.every, self.peaks = pid, every, {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                root = psutil.Process(self.root)
                for proc in [root, *root.children(recursive=True)]:
                    rss = proc.memory_info().rss
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
            except psutil.Error:
                pass
            self.halt.wait(self.every)

    def stop(self) -> None:
        self.halt.set()
        self.join()


def run_stage(name: str, args: list[str]) -> StageRun:
    """Run ``poisonlab ARGS`` and measure it; a failing command raises with its last output."""
    start = time.perf_counter()
    proc = subprocess.Popen([*POISONLAB, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    sampler.stop()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}): {output[-2000:]}")
    children = [rss for pid, rss in sampler.peaks.items() if pid != proc.pid]
    return StageRun(name, seconds, sampler.peaks.get(proc.pid, 0), max(children, default=0), len(children), output)


def _store(root: Path) -> Path:
    """The store `embed` wrote under ROOT/emb (one model per benchmark run)."""
    stores = [p for p in (root / "emb").iterdir() if p.is_dir()]
    if len(stores) != 1:
        raise RuntimeError(f"expected one embedding store in {root / 'emb'}, found {len(stores)}")
    return stores[0]


def reference_victim(root: Path, train_samples: int) -> tuple[Path, list[StageRun]]:
    """The embedding model: a tiny CLIP trained (3 epochs) on its own ``train_samples`` generated pairs, seed
    1, poisoned with the same attack at 0.5 %, so it has learned the trigger as the victim of a real run has."""
    victim = root / "victim"
    runs = [run_stage("victim: synth", ["synth", "--out", str(victim / "clean"), "--samples", str(train_samples),
                                        "--seed", "1"]),
            run_stage("victim: poison", ["poison", "--in", str(victim / "clean"), "--out", str(victim / "poisoned"),
                                         "--attack", "badnets", "--rate", "0.005", "--target", TARGET]),
            run_stage("victim: train", ["train", "--in", str(victim / "poisoned"), "--out", str(victim / "run"),
                                        "--epochs", "3", "--device", "cpu"])]
    return victim / "run", runs


def measure(root: Path, samples: int, model: Path | None, train_samples: int) -> tuple[list[StageRun], list[StageRun], dict]:
    """(the chain's stages, the reference victim's stages, the recall report)."""
    extra: list[StageRun] = []
    if model is None:
        model, extra = reference_victim(root, train_samples)
    runs = [run_stage("synth", ["synth", "--out", str(root / "clean"), "--samples", str(samples)]),
            run_stage("poison", ["poison", "--in", str(root / "clean"), "--out", str(root / "poisoned"),
                                 "--attack", "badnets", "--rate", str(RATE), "--target", TARGET]),
            run_stage("embed", ["embed", "--in", str(root / "poisoned"), "--out", str(root / "emb"), "--run",
                                str(model), "--device", "cpu"])]
    runs.append(run_stage("scan", ["scan", "--in", str(_store(root)), "--out", str(root / "scores")]))
    runs.append(run_stage("clean", ["clean", "--in", str(root / "poisoned"), "--scores", str(root / "scores"),
                                    "--decision", "top_fraction:detector=default,fraction=0.02",
                                    "--out", str(root / "cleaned")]))
    runs.append(run_stage("recall", ["recall", "--scores", str(root / "scores"), "--manifest",
                                     str(root / "poisoned"), "--out", str(root / "recall"), "--json"]))
    recall = json.loads(runs[-1].output[runs[-1].output.index("{"):])
    return runs, extra, recall


def rows_of(runs: list[StageRun], extra: list[StageRun], samples: int, train_samples: int,
            recall: dict) -> list[Row]:
    synth_rate = samples / runs[0].seconds
    rows = []
    for r, n in [(r, samples) for r in runs] + [(r, train_samples) for r in extra]:
        rate = n / r.seconds
        note = (f"{r.seconds:,.0f} s; driver peak {r.driver_rss / 2**30:.2f} GiB; "
                f"{r.workers} child processes, largest peak {r.worker_rss / 2**30:.2f} GiB")
        rows.append(Row(f"scale {n:,}: {r.name}", rate, "samples/s", synth_rate, "synth", note=note))
    for name, d in recall.get("detectors", {}).items():
        metrics = d["all"]
        at_budget = ", ".join(f"{b}: {v['recall']:.2f}" for b, v in metrics.get("budgets", {}).items())
        rows.append(Row(f"scale {samples:,}: filter {name}", metrics["auroc"] or 0.0, "AUROC",
                        note=f"{metrics['positives']} poisoned; recall at {at_budget}"))
    return rows


def run(quick: bool, samples: int | None = None) -> list[Row]:
    samples = samples or (5_000 if quick else 100_000)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        train = min(samples, 20_000)
        runs, extra, recall = measure(Path(tmp), samples, None, train)
    return rows_of(runs, extra, samples, train, recall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--out", type=Path, required=True, help="a folder with room for the shards (kept)")
    parser.add_argument("--model", type=Path, default=None, help="a training run to embed with")
    parser.add_argument("--train-samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs, extra, recall = measure(args.out, args.samples, args.model, args.train_samples)
    print(format_table(rows_of(runs, extra, args.samples, args.train_samples, recall)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
