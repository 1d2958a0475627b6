"""Shard folders are read without following links (issue 11, finding 3): the reader, the completion
markers that ``synth --out`` and every resumable command trust, and ``stats``."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import poisonlab.flows.cli.data  # noqa: F401  (registers synth and stats)
from poisonlab.flows.cli import app
from poisonlab.pipelines.executor import run_local
from poisonlab.shards.plan import plan_source_tasks
from poisonlab.shards.reader import ReadReport, read_shard
from poisonlab.shards.synth import SynthSource, SynthSpec

SPEC = SynthSpec(samples=6, samples_per_shard=3, image_size=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("links") / "shards"
    source = SynthSource(SPEC)
    run_local(plan_source_tasks(source, source.shards(), out))
    return out


def test_a_linked_tar_or_sidecar_is_a_shard_error_not_followed(shards: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "00000.tar").symlink_to(shards / "00000.tar")
    shutil.copy(shards / "00000.parquet", data / "00000.parquet")
    shutil.copy(shards / "00001.tar", data / "00001.tar")
    os.mkfifo(data / "00001.parquet")  # would block a reader that opens it
    report = ReadReport()
    rows = list(read_shard(data, "00000", report=report))
    assert report.shard_errors == ["unreadable_tar: 00000.tar is a symbolic link (not followed)"]
    assert len(rows) == 3 and not any(r.is_live for r in rows)  # the sidecar's rows, carried as errors
    report = ReadReport()
    rows = list(read_shard(data, "00001", report=report))
    assert len(rows) == 3 and all(r.is_live for r in rows)
    assert report.shard_errors == ["unreadable_sidecar: 00001.parquet is a FIFO"]
    result = CliRunner().invoke(app, ["stats", str(data), "--json", "--strict"])
    problems = json.loads(result.stdout)["problems"]
    assert result.exit_code == 1 and problems["00000"] == ["unreadable_tar: 00000.tar is a symbolic link (not followed)"]
    assert problems["00001"][0] == "unreadable_sidecar: 00001.parquet is a FIFO"


def test_synth_out_never_trusts_linked_completion_markers(shards: Path, tmp_path: Path) -> None:
    """Links planted in --out (to another dataset's finished shard, to /etc/passwd, a FIFO) are not a
    completed shard: the shard is generated again and the links replaced, never read."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
        (out / name).symlink_to(shards / name)
    (out / "00001.tar").symlink_to("/etc/passwd")
    (out / "00001.parquet").symlink_to("/etc/passwd")
    os.mkfifo(out / "00001_stats.json")
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--samples", "6", "--samples-per-shard", "3",
                                      "--image-size", "8", "--eval-per-class", "0", "--executor", "local", "--json"])
    assert result.exit_code == 0, result.output
    for path in out.iterdir():
        if path.name[0].isdigit():
            assert stat.S_ISREG(os.lstat(path).st_mode), path
    assert (out / "00000.tar").read_bytes() == (shards / "00000.tar").read_bytes()  # same spec, same bytes
    assert CliRunner().invoke(app, ["stats", str(out), "--strict"]).exit_code == 0
