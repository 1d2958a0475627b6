"""Start-up cost of each executor, as a user meets it: wall time of a whole ``poisonlab`` command.

``synth --samples 200`` and ``poison`` on those 200 samples, each run as a fresh process (interpreter,
imports, planning, the run, finalising) with the default executor (``auto``), ``--executor local`` (the
baseline: nothing started) and ``--executor prefect`` (a local Dask cluster and one temporary Prefect API
server). No ``PREFECT_*`` setting is inherited, so the prefect run starts its own server as a new user's
would. The target for the default is 10 s per command on the development machine (2 cores). The sizes are
the issue's and small already, so ``--quick`` runs the same rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import Row

SAMPLES = 200
EXECUTORS = ("auto", "local", "prefect")
TARGET_SECONDS = 10.0


def _poisonlab() -> str:
    return str(Path(sys.executable).with_name("poisonlab"))


def _timed(args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    start = time.perf_counter()
    done = subprocess.run([_poisonlab(), *args, "--quiet"], env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"poisonlab {' '.join(args)} failed: {done.stderr[-2000:]}")
    return seconds


def _commands(root: Path, executor: str) -> dict[str, list[str]]:
    data, poisoned = root / f"data-{executor}", root / f"poisoned-{executor}"
    return {
        "synth": ["synth", "--out", str(data), "--samples", str(SAMPLES), "--executor", executor],
        "poison": ["poison", "--in", str(data), "--out", str(poisoned), "--attack", "badnets", "--count", "2",
                   "--target", "red circle", "--executor", executor],
    }


def run(quick: bool) -> list[Row]:
    seconds: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        for executor in EXECUTORS:
            for command, args in _commands(Path(tmp), executor).items():
                seconds[command, executor] = _timed(args)
    rows = []
    for command in ("synth", "poison"):
        local = seconds[command, "local"]
        auto = seconds[command, "auto"]
        rows.append(Row(
            name=f"{command} {SAMPLES} samples, default executor (auto)", value=auto, unit="s", baseline=local,
            baseline_name="--executor local", higher_is_better=False, floor=0.8,
            note=f"whole command; target <= {TARGET_SECONDS:.0f} s: {'met' if auto <= TARGET_SECONDS else 'MISSED'}",
        ))
        rows.append(Row(
            name=f"{command} {SAMPLES} samples, --executor prefect", value=seconds[command, "prefect"], unit="s",
            baseline=local, baseline_name="--executor local", higher_is_better=False,
            note="start-up of a local Dask cluster and one temporary Prefect server included",
        ))
    return rows
