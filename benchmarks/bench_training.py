"""Training throughput: ``poisonlab train`` vs ``python -m open_clip_train.main`` on the same shards.

Both run in their own process on the same generated shards, with the same model config
(poisonlab-tiny-32, registered with open_clip for the baseline through ``open_clip.add_model_config``),
batch size, precision (fp32) and device. Steady-state throughput is pairs per second over every step but
the first (which pays for loader start-up), from each trainer's own per-step timings: open_clip_train's
``Batch (t)`` log lines with ``--log-every-n-steps 1``, and poisonlab's step table with ``log_every=1``;
both time a step from the end of the previous one, data wait included. The baseline is the better of
open_clip_train with 0 and 1 DataLoader workers (the machine has few cores).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from baselines import generate
from run import Row

MODEL = "poisonlab-tiny-32"
BATCH = 128
ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Setup:
    """What both trainers are given: the CPU row's defaults, or a GPU's (``bench_gpu``)."""

    model: str = MODEL
    batch: int = BATCH
    device: str = "cpu"
    precision: str = "fp32"  # fp32, or amp (both trainers' mixed precision)
    workers: tuple[int, ...] = (0, 1)  # open_clip_train's DataLoader workers tried (the better one is the baseline)
    our_workers: int = 1


# Registers the shipped config (if any) with open_clip, then runs open_clip_train's own entry point unchanged.
OPEN_CLIP_WRAPPER = (
    "import runpy, sys, open_clip; sys.argv[1] and open_clip.add_model_config(sys.argv[1]); "
    "sys.argv = ['open_clip_train.main'] + sys.argv[2:]; runpy.run_module('open_clip_train.main', run_name='__main__')"
)
OURS = (
    "import sys; from pathlib import Path; from poisonlab.training import TrainSettings, train_run; "
    "train_run(Path(sys.argv[1]), Path(sys.argv[2]), TrainSettings(model=sys.argv[3], epochs=1, "
    "batch_size=int(sys.argv[4]), lr=1e-3, warmup_steps=10, log_every=1, device=sys.argv[5], precision=sys.argv[6], "
    "workers=int(sys.argv[7])), progress=False)"
)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def _steady_rate(step_seconds: list[float], batch: int) -> float:
    if len(step_seconds) < 3:
        raise RuntimeError(f"too few steps to time ({len(step_seconds)})")
    return batch * (len(step_seconds) - 1) / sum(step_seconds[1:])


def _ours(shards: Path, work: Path, setup: Setup) -> float:
    import pandas as pd

    out = work / "ours"
    args = [str(shards), str(out), setup.model, str(setup.batch), setup.device, setup.precision, str(setup.our_workers)]
    proc = subprocess.run([sys.executable, "-c", OURS, *args], env=_env(), capture_output=True, text=True, cwd=work)
    if proc.returncode != 0:
        raise RuntimeError(f"poisonlab train failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    steps = pd.read_csv(out / "metrics_steps.csv")
    return _steady_rate([setup.batch / r for r in steps["pairs_per_s"]], setup.batch)


def _open_clip_train(shards: Path, samples: int, work: Path, workers: int, setup: Setup) -> float:
    config = ROOT / "models" / "configs" / f"{setup.model}.json"
    n_shards = len(list(shards.glob("*.tar")))
    logs = work / f"oc-logs-{workers}"
    args = [
        "--train-data", str(shards / f"{{00000..{n_shards - 1:05d}}}.tar"), "--dataset-type", "webdataset",
        "--train-num-samples", str(samples), "--batch-size", str(setup.batch), "--epochs", "1", "--workers",
        str(workers), "--device", setup.device, "--model", setup.model, "--precision", setup.precision, "--lr", "1e-3",
        "--warmup", "10", "--wd", "0.1", "--log-every-n-steps", "1", "--logs", str(logs), "--name", "bench",
        "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0", "--report-to", "", "--seed", "0",
    ]
    proc = subprocess.run([sys.executable, "-c", OPEN_CLIP_WRAPPER, str(config) if config.exists() else "", *args],
                          env=_env(), capture_output=True, text=True, cwd=work)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed ({proc.returncode}): {text[-2000:]}")
    times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    return _steady_rate(times, setup.batch)


def compare(shards: Path, samples: int, work: Path, setup: Setup, rounds: int) -> tuple[float, float, str]:
    """Best steady-state pairs/s of poisonlab and of open_clip_train (and its workers), interleaved."""
    ours, baseline, which = 0.0, 0.0, ""
    for r in range(rounds):  # interleaved, best of each: the machine is shared
        run_dir = work / f"round{r}-{setup.device}"
        run_dir.mkdir()
        for workers in setup.workers:
            rate = _open_clip_train(shards, samples, run_dir, workers, setup)
            if rate > baseline:
                baseline, which = rate, f"workers={workers}"
        ours = max(ours, _ours(shards, run_dir, setup))
    return ours, baseline, which


def run(quick: bool) -> list[Row]:
    samples = 2048 if quick else 6144
    rounds = 1 if quick else 2
    setup = Setup(workers=(1,) if quick else (0, 1))
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        shards = generate(work / "shards", samples, 256, seed=0, image_size=32)
        ours, baseline, which = compare(shards, samples, work, setup, rounds)
    return [Row(name=f"train pairs/s ({MODEL}, batch {BATCH}, fp32 CPU)", value=ours, unit="pairs/s",
                baseline=baseline, baseline_name=f"open_clip_train.main {which}", higher_is_better=True, floor=1.0,
                note=f"{samples} pairs, steady state (first step excluded), best of {rounds}")]
