"""``poisonlab federate partition`` through typer's runner: a table and a record, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import poisonlab.flows.cli.federate  # noqa: F401  (registers the sub-app)
from poisonlab.federated.partition import RECORD_FILE, TABLE_FILE
from poisonlab.flows.cli.app import app

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, ["federate", "partition", *args])


def test_partition_writes_table_and_record(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "part"
    result = _invoke("--in", str(tiny_shards), "--clients", "3", "--scheme", "dirichlet", "--alpha", "0.5",
                     "--seed", "4", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["clients"] == 3 and record["samples"] == 240 and record["params"]["alpha"] == 0.5
    assert (out / TABLE_FILE).is_file() and json.loads((out / RECORD_FILE).read_text()) == record
    assert json.loads((out / "poisonlab.json").read_text()) == {"kind": "partition"}
    again = _invoke("--in", str(tiny_shards), "--clients", "3", "--scheme", "dirichlet", "--alpha", "0.5",
                    "--seed", "4", "--out", str(out))  # a rerun into its own folder is allowed
    assert again.exit_code == 0 and "240 samples of 4 shards to 3 clients" in again.stdout


def test_clear_one_line_errors(tiny_shards: Path, tmp_path: Path) -> None:
    cases = [
        (["--scheme", "iid", "--alpha", "0.5"], "--alpha does not apply to --scheme iid"),
        (["--scheme", "nope"], "unknown partition_scheme 'nope'"),
        (["--scheme", "by_shard", "--clients", "9"], "one shard per client"),
        (["--scheme", "dirichlet", "--label-column", "nothing"], "needs a class label per sample"),
        (["--scheme", "dirichlet", "--alpha", "-1"], "invalid parameters for partition_scheme 'dirichlet'"),
    ]
    for extra, message in cases:
        args = ["--in", str(tiny_shards), "--clients", "2", "--out", str(tmp_path / "p"), *extra]
        if "--clients" in extra:
            args = [a for i, a in enumerate(args) if i not in (2, 3)]
        result = _invoke(*args)
        assert result.exit_code == 2, (extra, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (extra, lines)
    assert not (tmp_path / "p" / RECORD_FILE).exists()


def test_partition_refuses_to_write_over_shards(tiny_shards: Path, tmp_path: Path) -> None:
    result = _invoke("--in", str(tiny_shards), "--clients", "2", "--out", str(tiny_shards))
    assert result.exit_code == 2 and "also an input" in result.stderr
    missing = _invoke("--in", str(tmp_path / "none"), "--clients", "2", "--out", str(tmp_path / "p"))
    assert missing.exit_code != 0 and missing.stderr.startswith("error: ") and "does not exist" in missing.stderr


def test_partition_folders_are_their_own_kind(tiny_shards: Path, tmp_path: Path) -> None:
    from poisonlab.flows.guards import folder_kind

    out = tmp_path / "part"
    assert _invoke("--in", str(tiny_shards), "--clients", "2", "--out", str(out)).exit_code == 0
    (out / "poisonlab.json").unlink()
    assert folder_kind(out) == "partition"  # known by its record even without the kind file
    shards_like = tmp_path / "shards_like"
    shards_like.mkdir()
    (shards_like / "dataset.json").write_text("{}")
    refused = _invoke("--in", str(tiny_shards), "--clients", "2", "--out", str(shards_like))
    assert refused.exit_code == 2 and "holds shards output" in refused.stderr
