"""Issue 11, finding 4: a killed ``poisonlab synth`` leaves no process of its own running.

The run uses Prefect's own temporary API server (no PREFECT_API_URL) and a local Dask cluster of two
workers, the setting in which a killed command used to leave its ~230 MB server behind. Its descendants
are listed with psutil before the kill; within 10 s none may be left. The rerun then completes the
folder byte-identically to an uninterrupted run (test_flows_resume checks the same under the test server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import make_synth

SAMPLES, PER_SHARD = 2400, 30


def _command(out: Path, *extra: str) -> list[str]:
    cli = str(Path(sys.executable).with_name("poisonlab"))
    return [cli, "synth", "--out", str(out), "--samples", str(SAMPLES), "--samples-per-shard", str(PER_SHARD),
            "--eval-per-class", "0", "--json", *extra]


def _env(tmp_path: Path) -> dict[str, str]:
    """No PREFECT_API_URL: the command starts (and must stop) its own temporary server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def _wait_for_shards(out: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(list(out.glob("*_stats.json"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not get going: " + (proc.stderr.read().decode()[-2000:] if proc.poll() else ""))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_leaves_no_process_and_the_rerun_completes_it(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(_command(out, "--workers", "2"), env=_env(tmp_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    descendants: list[psutil.Process] = []
    try:
        _wait_for_shards(out, proc, 3)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in descendants]
        assert any("uvicorn" in c for c in commands), commands  # Prefect's temporary server is among them
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        assert [" ".join(p.cmdline()) for p in alive] == []
    finally:
        for p in descendants:
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    rerun = subprocess.run(_command(out, "--executor", "local"), env=_env(tmp_path), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reference = make_synth(tmp_path / "reference", samples=SAMPLES, per_shard=PER_SHARD)
    produced = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    expected = {p.name: p.read_bytes() for p in sorted(reference.iterdir()) if p.is_file()}
    assert produced == expected
