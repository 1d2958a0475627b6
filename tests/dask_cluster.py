"""A real Dask cluster for tests: a scheduler and workers started as separate processes on 127.0.0.1.

The workers run in their own working directory (``cwd``), as on a cluster the user already has: a
relative path handed to them would name another folder than the driver's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _wait_for_file(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


@contextmanager
def loopback_cluster(directory: Path, workers: int = 1, cwd: Path | None = None) -> Iterator[Path]:
    """Start ``dask scheduler`` and ``workers`` ``dask worker`` processes; yield the scheduler file
    (its ``address`` is the scheduler's). Everything is stopped on exit."""
    scheduler_file = directory / "scheduler.json"
    dask = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": cwd or directory}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                               "--scheduler-file", str(scheduler_file)], **quiet)]
    try:
        _wait_for_file(scheduler_file, 60)
        address = json.loads(scheduler_file.read_text())["address"]
        procs += [subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                    "--host", "127.0.0.1", "--no-dashboard"], **quiet) for _ in range(workers)]
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield scheduler_file
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def address_of(scheduler_file: Path) -> str:
    return str(json.loads(scheduler_file.read_text())["address"])
