"""The foundation's acceptance check: ``poisonlab synth --samples 20000`` then ``poisonlab stats --json``
accounts for exactly 20000 samples, the shards read with plain ``webdataset.WebDataset`` and the
sidecars with pyarrow and DuckDB."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pytest
import webdataset as wds
from typer.testing import CliRunner

from poisonlab.shards.layout import brace_pattern, list_shards

SAMPLES = 20000


@pytest.mark.slow
def test_synth_20000_then_stats(prefect_harness, tmp_path: Path) -> None:
    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        import_module(name)
    out = tmp_path / "data"
    runner = CliRunner()
    made = runner.invoke(app, ["synth", "--out", str(out), "--samples", str(SAMPLES), "--json"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["train"]["samples"] == SAMPLES

    stats = runner.invoke(app, ["stats", str(out), "--json"])
    assert stats.exit_code == 0, stats.output
    summary = json.loads(stats.stdout)
    assert summary["samples"] == SAMPLES and summary["by_status"] == {"ok": SAMPLES} and summary["live"] == SAMPLES
    assert sum(v["samples"] for v in summary["per_shard"].values()) == SAMPLES

    shards = list_shards(out)
    assert json.loads((out / "sizes.json").read_text()) == {f"{s}.tar": 1000 for s in shards}
    keys, captions = set(), 0
    for sample in wds.WebDataset(brace_pattern(out, shards), shardshuffle=False):
        keys.add(sample["__key__"])
        captions += bool(sample["txt"].decode("utf-8"))
        assert sample["jpg"][:2] == b"\xff\xd8" and json.loads(sample["json"])["width"] == 32
    assert len(keys) == SAMPLES == captions

    sidecars = sorted(str(p) for p in out.glob("*.parquet"))
    table = pads.dataset(sidecars, format="parquet").to_table(columns=["key", "status", "sha256"])
    assert table.num_rows == SAMPLES and set(table.column("key").to_pylist()) == keys
    count, distinct, ok = duckdb.connect().execute(
        f"select count(*), count(distinct key), count(*) filter (where status = 'ok') "
        f"from read_parquet('{out}/*.parquet')").fetchone()
    assert count == distinct == ok == SAMPLES
