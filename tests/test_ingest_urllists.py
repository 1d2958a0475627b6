"""URL lists before any download: formats, column checks, per-row verdicts, keys, output-folder checks."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import poisonlab.flows.cli.ingest  # noqa: F401  (registers the ingest commands on the app)
from poisonlab.flows.cli import app
from poisonlab.shards.ingest import DownloadOptions, IngestSpec, prepare_ingest
from poisonlab.shards.parts import PlanError, read_part, sample_key
from poisonlab.shards.urllists import UrlColumns, UrlListError, plan_table, read_url_list, row_verdicts

ROWS = [
    {"url": "http://127.0.0.1:9/a.jpg", "caption": "a red circle", "similarity": 0.31, "LICENSE": "cc-by"},
    {"url": "http://127.0.0.1:9/b.jpg", "caption": "a blue square", "similarity": 0.29, "LICENSE": "?"},
]


def _write(path: Path, fmt: str) -> Path:
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(ROWS[0])] + [sep.join(str(v) for v in r.values()) for r in ROWS]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "json":
        path.write_text(json.dumps(ROWS))
    elif fmt == "txt":
        path.write_text("".join(r["url"] + "\n" for r in ROWS))
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv", "jsonl", "json", "txt"])
def test_every_img2dataset_format_reads_the_same_rows(tmp_path: Path, fmt: str) -> None:
    table = read_url_list(_write(tmp_path / f"urls.{fmt}", fmt))
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    if fmt != "txt":
        assert table.column("caption").to_pylist() == [r["caption"] for r in ROWS]
        assert table.column("similarity").to_pylist() == pytest.approx([0.31, 0.29])


def test_gzip_and_folders_of_parts(tmp_path: Path) -> None:
    raw = _write(tmp_path / "u.csv", "csv").read_bytes()
    (tmp_path / "gz").mkdir()
    for i in range(2):
        (tmp_path / "gz" / f"part{i}.csv.gz").write_bytes(gzip.compress(raw))
    assert read_url_list(tmp_path / "gz").num_rows == 4


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (UrlColumns(url="URL"), "no URL column 'URL'"),
        (UrlColumns(caption="TEXT"), "no caption column 'TEXT'"),
        (UrlColumns(hash="sha256"), "no hash column 'sha256'"),
    ],
)
def test_missing_columns_are_named_with_the_ones_present(tmp_path: Path, columns: UrlColumns, message: str) -> None:
    table = read_url_list(_write(tmp_path / "u.parquet", "parquet"))
    with pytest.raises(UrlListError, match=message) as info:
        plan_table(table, columns)
    assert "url, caption, similarity, LICENSE" in str(info.value)


def test_malformed_and_empty_lists_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"url": "http://x/a.jpg"\n')
    with pytest.raises(UrlListError, match="cannot read"):
        read_url_list(tmp_path / "bad.jsonl")
    (tmp_path / "empty.csv").write_text("url,caption\n")
    with pytest.raises(UrlListError, match="no rows"):
        read_url_list(tmp_path / "empty.csv")
    with pytest.raises(UrlListError, match="cannot tell the format"):
        read_url_list(_write(tmp_path / "urls.xlsx", "csv"))
    pq.write_table(pa.table({"url": [1, 2], "caption": ["a", "b"]}), tmp_path / "ints.parquet")
    with pytest.raises(UrlListError, match="holds int64, not text"):
        plan_table(read_url_list(tmp_path / "ints.parquet"), UrlColumns())


def test_row_verdicts_skip_what_must_not_be_fetched() -> None:
    good = "ab" * 32
    table = pa.table({
        "url": ["http://h/1.jpg", "http://h/1.jpg", "file:///etc/passwd", None, "ftp://h/x", "https://h/2.jpg",
                "http://h/3.jpg", "http://h/4.jpg", " http://h/1.jpg "],
        "caption": ["a", "b", "c", "d", "e", "  ", "g", "h", "i"],
        "sha256": [good, good, good, good, good, good, "xyz", None, good.upper()],
    })
    statuses, reasons = row_verdicts(table, UrlColumns(hash="sha256"))
    kinds = [None if r is None else r.split(":")[1].strip() for r in reasons]
    assert kinds == [None, "duplicate_url", "unsupported_url_scheme", "missing_url", "unsupported_url_scheme",
                     "empty_caption", "invalid_expected_hash", "invalid_expected_hash", "duplicate_url"]
    assert statuses[1] == "dropped" and statuses[5] == "dropped" and statuses[2] == "error"
    # Without verification a malformed hash is only recorded, never a reason to skip the row.
    _, reasons = row_verdicts(table, UrlColumns(hash="sha256"), verify=False)
    assert reasons[6] is None and reasons[7] is None


def test_plan_carries_extra_columns_and_renames_collisions() -> None:
    table = pa.table({"url": ["http://h/a.jpg"], "caption": ["x"], "status": ["200"], "width": [640],
                      "NSFW": ["UNLIKELY"], "hash": ["ab" * 32]})
    plan = plan_table(table, UrlColumns(hash="hash"))
    assert plan.column("expected_sha256").to_pylist() == ["ab" * 32]
    assert plan.column("list_status").to_pylist() == ["200"]
    assert plan.column("list_width").to_pylist() == [640]
    assert plan.column("NSFW").to_pylist() == ["UNLIKELY"]
    assert "hash" not in plan.column_names


@pytest.mark.parametrize("per_shard", [1, 7, 10, 1000, 10_000, 12_345])
def test_keys_are_img2dataset_keys(per_shard: int) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline: no version check on import
    from img2dataset.downloader import compute_key

    digits = math.ceil(math.log10(per_shard))
    for index in (0, 1, per_shard - 1, per_shard, 3 * per_shard + 5):
        shard, position = divmod(index, per_shard)
        assert sample_key(index, per_shard) == compute_key(position, shard, digits, 5)
    assert sample_key(0, 10_000) == "000000000"


def _spec(tmp_path: Path, urls: Path, **kw) -> IngestSpec:
    return IngestSpec(urls=urls, out=tmp_path / "out", download=DownloadOptions(processes=1, threads=2), **kw)


def test_prepare_writes_parts_and_refuses_other_output(tmp_path: Path) -> None:
    urls = _write(tmp_path / "u.parquet", "parquet")
    plan = prepare_ingest(_spec(tmp_path, urls, samples_per_shard=1))
    assert plan.shards == ("00000", "00001") and plan.rows == 2
    assert [r["key"] for r in read_part(plan.parts, "00001")] == ["00001"]
    assert prepare_ingest(_spec(tmp_path, urls, samples_per_shard=1)).fingerprint == plan.fingerprint  # resumable
    with pytest.raises(PlanError, match="another input or other options"):
        prepare_ingest(_spec(tmp_path, urls, samples_per_shard=2))
    other = tmp_path / "shards"
    other.mkdir()
    (other / "00000.tar").write_bytes(b"")
    with pytest.raises(PlanError, match="did not write"):
        prepare_ingest(IngestSpec(urls=urls, out=other))


def test_cli_refuses_a_malformed_list_before_any_download(tmp_path: Path) -> None:
    urls = _write(tmp_path / "u.csv", "csv")
    result = CliRunner().invoke(app, ["ingest", "--urls", str(urls), "--out", str(tmp_path / "out"),
                                      "--caption-col", "TEXT", "--executor", "local"])
    assert result.exit_code == 2
    assert "no caption column 'TEXT'" in result.output
    assert not (tmp_path / "out").exists()
