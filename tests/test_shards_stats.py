"""``poisonlab stats`` reports what makes its counts wrong (issue 11, findings 4 and 6): shards without a
sidecar or with a malformed one, shard-level errors, and sidecars that disagree with their tars."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile import CASES
from typer.testing import CliRunner

import poisonlab.flows.cli.data  # noqa: F401  (registers the stats command on the app)
from poisonlab.flows.cli import app
from poisonlab.pipelines.executor import run_local
from poisonlab.shards.plan import plan_folder_tasks, plan_source_tasks
from poisonlab.shards.synth import SynthSource, SynthSpec


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stats") / "clean"
    source = SynthSource(SynthSpec(samples=12, samples_per_shard=4, image_size=8))
    run_local(plan_source_tasks(source, source.shards(), out))
    return out


@pytest.fixture()
def data(clean: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "data"))


def _stats(directory: Path, *extra: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, ["stats", str(directory), "--json", *extra])
    return result.exit_code, json.loads(result.stdout)


def test_a_clean_folder_has_no_problems(clean: Path) -> None:
    code, summary = _stats(clean, "--strict")
    assert code == 0 and summary["problems"] == {} and summary["live"] == 12


def test_a_tar_without_sidecar_is_reported(data: Path) -> None:
    (data / "00001.parquet").unlink()
    code, summary = _stats(data)
    assert code == 0 and summary["problems"]["00001"] == ["missing_sidecar: 00001.tar has no 00001.parquet"]
    assert _stats(data, "--strict")[0] == 1
    human = CliRunner().invoke(app, ["stats", str(data)])
    assert "warning: 1 shards have problems" in human.output and "00001: missing_sidecar" in human.output


def test_a_sidecar_without_status_is_reported(data: Path) -> None:
    table = pq.read_table(data / "00000.parquet")
    pq.write_table(table.drop_columns(["status"]), data / "00000.parquet")
    code, summary = _stats(data, "--strict")
    assert code == 1
    assert summary["problems"]["00000"][0] == "malformed_sidecar: 00000.parquet has no status column (4 rows)"
    assert summary["samples"] == 12 and summary["live"] == 8  # its rows are samples, not counted as live


def test_an_unreadable_sidecar_is_reported_not_a_crash(data: Path) -> None:
    (data / "00002.parquet").write_bytes(b"not parquet")
    code, summary = _stats(data, "--strict")
    assert code == 1 and summary["problems"]["00002"][0].startswith("unreadable_sidecar: 00002.parquet")


def test_sidecar_and_tar_disagreeing_is_reported(data: Path) -> None:
    table = pq.read_table(data / "00000.parquet").to_pylist()
    table[0]["status"] = "dropped"  # the sidecar says dropped, the tar still holds it
    pq.write_table(pa.Table.from_pylist(table[:3] + [table[0] | {"key": "ghost", "status": "ok"}]),
                   data / "00000.parquet")
    code, summary = _stats(data, "--strict")
    problems = summary["problems"]["00000"]
    assert code == 1 and len(problems) == 2, problems
    assert problems[0].startswith("sidecar_tar_mismatch: 1 live sidecar rows have no sample in the tar ('ghost')")
    assert problems[1].startswith("sidecar_tar_mismatch: 2 samples in the tar have no live sidecar row")
    assert _stats(data, "--no-check-tars")[1]["problems"] == {}


def test_a_zip_named_tar_is_a_shard_error_in_and_out(tmp_path: Path) -> None:
    """Finding 6: a zip under a .tar name gave 0 rows and no warning anywhere."""
    src = tmp_path / "src"
    src.mkdir()
    data, _, _ = CASES["zip_named_tar"]("00000", tmp_path / "marker")
    (src / "00000.tar").write_bytes(data)
    code, summary = _stats(src, "--strict")
    assert code == 1 and summary["problems"]["00000"] == [
        "missing_sidecar: 00000.tar has no 00000.parquet", "not_a_tar: a zip archive, not a tar archive"]
    stats = run_local(plan_folder_tasks(src, tmp_path / "out", []))
    assert stats[0].samples == 0 and stats[0].shard_errors == ["not_a_tar: a zip archive, not a tar archive"]
    code, summary = _stats(tmp_path / "out", "--strict")
    assert code == 1 and summary["problems"]["00000"] == ["shard_error: not_a_tar: a zip archive, not a tar archive"]


def test_a_tar_hiding_members_is_reported(tmp_path: Path) -> None:
    data, keys, _ = CASES["directory_with_data"]("00000", tmp_path / "marker")
    (tmp_path / "00000.tar").write_bytes(data)
    pq.write_table(pa.table({"key": keys, "status": ["success"] * len(keys)}), tmp_path / "00000.parquet")
    code, summary = _stats(tmp_path, "--strict")
    problems = summary["problems"]["00000"]
    assert code == 1 and any(p.startswith("refused_tar: dir entry 'd' with") for p in problems), problems
    assert "hidden_member: '000000002.pyd' lies past the problem" in problems
    assert any(p.startswith("sidecar_tar_mismatch: 2 live sidecar rows") for p in problems)
    assert not (tmp_path / "marker").exists()


def test_an_empty_folder_fails(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stats", str(tmp_path)])
    assert result.exit_code == 2 and "no shards or sidecars" in result.output
