"""Issue 11, findings 3 and 5 (corrupt markers): a completion marker proves which configuration produced
which bytes. Another configuration is refused (or redone with --overwrite); a marker whose tar does not
match, or that does not parse, is redone; an unchanged rerun skips every shard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import files
from typer.testing import CliRunner

from poisonlab.flows.cli import app
from poisonlab.shards.layout import stats_path, tar_path


def synth(cli: CliRunner, out: Path, *extra: str) -> object:
    return cli.invoke(app, ["synth", "--out", str(out), "--samples", "90", "--samples-per-shard", "30",
                            "--eval-per-class", "1", "--executor", "local", "--json", *extra])


def one_line_error(res: object, *words: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("other", [["--seed", "2"], ["--image-size", "16"]])
def test_synth_over_another_configuration_is_refused_then_overwritten(cli, tmp_path, other):
    out = tmp_path / "out"
    assert synth(cli, out).exit_code == 0
    before = files(out)
    one_line_error(synth(cli, out, *other), "another configuration", "--overwrite")
    assert files(out) == before, "a refused run writes nothing"
    assert synth(cli, out, *other, "--overwrite").exit_code == 0
    assert synth(cli, tmp_path / "fresh", *other).exit_code == 0
    assert files(out) == files(tmp_path / "fresh")


def test_an_unchanged_rerun_skips_every_shard(cli, tmp_path):
    out = tmp_path / "out"
    assert synth(cli, out).exit_code == 0
    stamps = {p.name: os.stat(p).st_mtime_ns for p in out.glob("*.tar")}
    assert synth(cli, out).exit_code == 0
    assert {p.name: os.stat(p).st_mtime_ns for p in out.glob("*.tar")} == stamps


def _poison(cli: CliRunner, src: Path, out: Path) -> object:
    return cli.invoke(app, ["poison", "--in", str(src), "--out", str(out), "--attack", "badnets", "--count", "20",
                            "--target", "red circle", "--executor", "local", "--json"])


@pytest.mark.parametrize("damage", ["truncate", "corrupt_stats", "empty_stats", "stats_not_object"])
def test_poison_redoes_a_shard_whose_marker_does_not_prove_its_tar(cli, tiny_shards, tmp_path, damage):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert _poison(cli, tiny_shards, reference).exit_code == 0
    assert _poison(cli, tiny_shards, out).exit_code == 0
    tar, stats = tar_path(out, "00001"), stats_path(out, "00001")
    if damage == "truncate":
        tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    else:
        stats.write_text({"corrupt_stats": "{\"shard\": \"000", "empty_stats": "",
                          "stats_not_object": "[1, 2]"}[damage])
    res = _poison(cli, tiny_shards, out)
    assert res.exit_code == 0, res.output
    assert files(out) == files(reference)
    assert json.loads(stats.read_text())["marker"]["tar_sha256"]


def test_synth_redoes_a_truncated_tar(cli, tmp_path):
    out = tmp_path / "out"
    assert synth(cli, out).exit_code == 0
    reference = files(out)
    tar = tar_path(out, "00002")
    tar.write_bytes(tar.read_bytes()[:1000])
    assert synth(cli, out).exit_code == 0
    assert files(out) == reference


def test_poison_over_another_run_is_refused_then_overwritten(cli, tiny_shards, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    assert _poison(cli, tiny_shards, out).exit_code == 0
    other = ["poison", "--in", str(tiny_shards), "--attack", "sig", "--count", "7", "--target", "blue star",
             "--executor", "local", "--json"]
    one_line_error(cli.invoke(app, [*other, "--out", str(out)]), "another poisoning run", "--overwrite")
    assert cli.invoke(app, [*other, "--out", str(out), "--overwrite"]).exit_code == 0
    assert cli.invoke(app, [*other, "--out", str(fresh)]).exit_code == 0
    produced, expected = files(out), files(fresh)
    assert {k: v for k, v in produced.items() if k in expected} == expected
