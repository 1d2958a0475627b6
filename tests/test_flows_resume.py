"""Kill ``poisonlab synth`` (the flow, its Dask workers and its Prefect server) in the middle of a run:
no partial tar ever appears under its final name, and the rerun skips finished shards and ends
byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from poisonlab.flows.datasets import synth_job
from poisonlab.pipelines.job import run_job_local
from poisonlab.shards.layout import list_shards, stats_path, tar_path, temp_files
from poisonlab.shards.reader import ReadReport, read_shard
from poisonlab.shards.synth import SynthSource, SynthSpec

SAMPLES, PER_SHARD = 2400, 30  # 80 small shards: a kill lands between some of them


def _command(out: Path) -> list[str]:
    cli = str(Path(sys.executable).with_name("poisonlab"))
    return [cli, "synth", "--out", str(out), "--samples", str(SAMPLES), "--samples-per-shard", str(PER_SHARD),
            "--eval-per-class", "0", "--workers", "2", "--json"]


def _env(tmp_path: Path) -> dict[str, str]:
    """The CLI talks to the test harness's Prefect server, which the kill leaves alone."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    return env


def _check_final_tars(out: Path, checked: set[str]) -> None:
    """Every tar under its final name is whole: tarfile reads every member and the end-of-archive block."""
    for shard in list_shards(out):
        if shard in checked:
            continue
        with tarfile.open(tar_path(out, shard)) as tar:
            for member in tar:
                tar.extractfile(member).read()
        report = ReadReport()
        assert sum(1 for _ in read_shard(out, shard, report=report)) == PER_SHARD
        assert report.shard_errors == [], (shard, report.shard_errors)
        checked.add(shard)


def test_killed_run_resumes_to_identical_bytes(prefect_harness, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _env(tmp_path)
    proc = subprocess.Popen(_command(out), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checked: set[str] = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(out.glob("*_stats.json")) if out.exists() else []
            if out.exists():
                _check_final_tars(out, checked)
            if len(done) >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dask workers and its Prefect server
        proc.wait(timeout=60)
    time.sleep(0.5)  # let any orphan that was mid-write notice its parent is gone
    _check_final_tars(out, checked)
    finished = sorted(p.name for p in out.glob("*_stats.json"))
    assert 8 <= len(finished) < SAMPLES // PER_SHARD
    stamps = {name: os.stat(out / name).st_mtime_ns for name in finished}

    rerun = subprocess.run(_command(out), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {name: os.stat(out / name).st_mtime_ns for name in finished} == stamps  # skipped, not redone
    assert temp_files(out) == []

    reference = tmp_path / "reference"  # the same synth job, uninterrupted, in this process
    run_job_local(synth_job(SynthSource(SynthSpec(samples=SAMPLES, seed=0, samples_per_shard=PER_SHARD)), reference))
    produced = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    expected = {p.name: p.read_bytes() for p in sorted(reference.iterdir()) if p.is_file()}
    assert produced.keys() == expected.keys()
    assert [n for n in produced if produced[n] != expected[n]] == []
    assert stats_path(out, f"{SAMPLES // PER_SHARD - 1:05d}").exists()
