"""Ingest against a loopback HTTP server that serves images and every failure a crawler meets.

One ingest (with hash verification) of a URL list holding good images and each failure case runs once
for the module; the tests check that every row is accounted for with the right reason. img2dataset
itself, run directly on a list from the same server, is read by poisonlab unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from poisonlab.flows.ingest import ingest
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.ingest import DownloadOptions, IngestSpec, img2dataset_environment, redirect_output
from poisonlab.shards.layout import list_shards
from poisonlab.shards.loopback import LoopbackServer, Response, closed_port, redirect
from poisonlab.shards.reader import read_shard
from poisonlab.shards.summary import summarize
from poisonlab.shards.synth import SynthSpec, make_sample
from poisonlab.shards.urllists import UrlColumns

GOOD = 12
MAX_PIXELS = 128 * 128  # the cap for this test: the oversized image is 200x200
TIMEOUT = 1.0


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 90, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


IMAGES = [make_sample(SynthSpec(samples=GOOD, image_size=64, samples_per_shard=GOOD), i).payload for i in range(GOOD)]
OTHER = make_sample(SynthSpec(samples=1, image_size=64, seed=99), 0).payload
ROUTES = {f"/img/{i}.jpg": Response(IMAGES[i], content_type="image/jpeg") for i in range(GOOD)} | {
    "/swapped.jpg": Response(OTHER, content_type="image/jpeg"),
    "/moved.jpg": redirect("/img/5.jpg"),
    "/loop": redirect("/loop"),
    "/slow.jpg": Response(IMAGES[1], content_type="image/jpeg", delay_s=TIMEOUT + 2),
    "/page.html": Response(b"<html><body>not an image</body></html>", content_type="text/html"),
    "/truncated.jpg": Response(IMAGES[2][: len(IMAGES[2]) // 2], content_type="image/jpeg"),
    "/cut.jpg": Response(IMAGES[3][:300], content_type="image/jpeg", declared_length=len(IMAGES[3])),
    "/huge.png": Response(_png(200), content_type="image/png"),
}

# (path or full URL, caption, expected hash, expected status, expected reason prefix)
CASES = [(f"/img/{i}.jpg", f"a picture {i}", _sha(IMAGES[i]), "ok", None) for i in range(GOOD)] + [
    ("/img/0.jpg", "the same image again", _sha(IMAGES[0]), "dropped", "ingest: duplicate_url"),
    ("/img/7.jpg?empty", "", _sha(IMAGES[7]), "dropped", "ingest: empty_caption"),
    ("/img/8.jpg?none", None, _sha(IMAGES[8]), "dropped", "ingest: empty_caption"),
    ("/missing.jpg", "gone", _sha(b"x"), "error", "download: HTTP Error 404"),
    ("CLOSED", "unreachable host", _sha(b"x"), "error", "download: [Errno 111] Connection refused"),
    ("/slow.jpg", "a slow host", _sha(IMAGES[1]), "error", "download: timed out"),
    ("/moved.jpg", "redirected", _sha(IMAGES[5]), "ok", None),
    ("/loop", "a redirect loop", _sha(b"x"), "error", "download: HTTP Error 302"),
    ("/page.html", "not an image", _sha(b"x"), "error", "decode: undecodable_image"),
    ("/truncated.jpg", "a truncated file", _sha(b"x"), "error", "decode: undecodable_image"),
    ("/cut.jpg", "a transfer cut short", _sha(IMAGES[3]), "error", "download: IncompleteRead"),
    ("/huge.png", "too many pixels", _sha(_png(200)), "error", "decode: decompression_bomb"),
    ("/swapped.jpg", "a split-view swap", _sha(IMAGES[9]), "hash_mismatch", "verify_hash: hash_mismatch"),
    ("file:///etc/passwd", "a local file", _sha(b"x"), "error", "ingest: unsupported_url_scheme"),
    (None, "no url", _sha(b"x"), "error", "ingest: missing_url"),
    ("/img/10.jpg?badhash", "a malformed hash", "not-a-hash", "error", "ingest: invalid_expected_hash"),
]
PER_SHARD = 10


def _url(server: LoopbackServer, path: str | None) -> str | None:
    if path is None or path.startswith("file:"):
        return path
    if path == "CLOSED":
        return f"http://127.0.0.1:{closed_port()}/x.jpg"
    return server.url(path)


@pytest.fixture(scope="module")
def server():
    with LoopbackServer(ROUTES.get) as srv:
        yield srv


@pytest.fixture(scope="module")
def url_list(server: LoopbackServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("urls") / "urls.parquet"
    pq.write_table(pa.table({
        "url": [_url(server, c[0]) for c in CASES],
        "caption": [c[1] for c in CASES],
        "sha256": [c[2] for c in CASES],
        "similarity": [0.25 + i / 100 for i in range(len(CASES))],
        "LICENSE": ["cc-by"] * len(CASES),
    }), path)
    return path


def _options() -> DownloadOptions:
    return DownloadOptions(image_size=64, processes=1, threads=8, timeout=TIMEOUT, max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def ingested(url_list: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ingest") / "shards"
    spec = IngestSpec(urls=url_list, out=out, columns=UrlColumns(hash="sha256"), download=_options(),
                      samples_per_shard=PER_SHARD)
    record = ingest(spec, RunnerSpec(executor="local", progress=False), log=out.parent / "img2dataset.log")
    return out, record


def _rows(directory: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("*.parquet"))],
                            promote_options="permissive").to_pylist()


def test_every_row_is_accounted_for_with_its_reason(ingested: tuple[Path, dict]) -> None:
    out, record = ingested
    rows = _rows(out)
    assert len(rows) == len(CASES) == record["samples"]
    assert [r["key"] for r in rows] == [f"{i // PER_SHARD:05d}{i % PER_SHARD}" for i in range(len(CASES))]
    for row, (path, _, _, status, reason) in zip(rows, CASES, strict=True):
        assert row["status"] == status, (path, row["reason"])
        assert (row["reason"] is None) if reason is None else row["reason"].startswith(reason), (path, row["reason"])
    written = sum(r["status"] in LIVE_STATUSES for r in rows)
    assert written == record["written"] == GOOD + 1  # the redirect is followed
    failed = sum(v for k, v in record["by_status"].items() if k not in LIVE_STATUSES)
    assert written + failed == len(CASES)
    assert sum(record["reasons"].values()) == failed
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == written and sorted(sizes) == [f"{s}.tar" for s in list_shards(out)]
    assert not (out / "_ingest").exists()  # the plan and img2dataset's staging are gone


def test_written_samples_carry_hashes_and_source_columns(ingested: tuple[Path, dict]) -> None:
    out, _ = ingested
    samples = {s.key: s for shard in list_shards(out) for s in read_shard(out, shard) if s.is_live}
    assert len(samples) == GOOD + 1
    first = samples["000000"]
    assert first.text == "a picture 0" and first.meta["LICENSE"] == "cc-by"
    assert first.meta["similarity"] == pytest.approx(0.25)
    assert first.meta["download_sha256"] == first.meta["expected_sha256"] == _sha(IMAGES[0])
    assert (first.meta["width"], first.meta["height"]) == (64, 64)
    assert first.meta["url"].endswith("/img/0.jpg")
    rows = {r["key"]: r for r in _rows(out)}
    mismatch = next(r for r in rows.values() if r["status"] == "hash_mismatch")
    assert mismatch["expected_sha256"] == _sha(IMAGES[9]) and _sha(OTHER) in mismatch["reason"]
    assert mismatch["bytes"] is None  # not written: no payload recorded for it
    assert rows["000000"]["similarity"] == pytest.approx(0.25)  # extra columns in the sidecar too


def test_stats_report_the_hash_mismatch_rate(ingested: tuple[Path, dict]) -> None:
    out, _ = ingested
    summary = summarize(out)
    assert summary["hash_mismatch"] == 1
    assert summary["hash_mismatch_rate"] == pytest.approx(1 / len(CASES))
    per_shard = {k: v["hash_mismatch"] for k, v in summary["per_shard"].items()}
    assert per_shard == {"00000": 0, "00001": 0, "00002": 1}
    assert summary["per_shard"]["00002"]["hash_mismatch_rate"] == pytest.approx(1 / (len(CASES) - 2 * PER_SHARD))


def test_a_rerun_skips_the_finished_ingest(ingested: tuple[Path, dict], url_list: Path) -> None:
    out, record = ingested
    shard_files = lambda: {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name[0].isdigit()}  # noqa: E731
    before = shard_files()
    spec = IngestSpec(urls=url_list, out=out, columns=UrlColumns(hash="sha256"), download=_options(),
                      samples_per_shard=PER_SHARD)
    again = ingest(spec, RunnerSpec(executor="local", progress=False), log=out.parent / "again.log")
    assert again["by_status"] == record["by_status"]
    assert shard_files() == before  # no shard was rewritten
    assert not (out.parent / "again.log").exists()  # img2dataset was not even started


def test_img2dataset_output_reads_unchanged(server: LoopbackServer, tmp_path: Path) -> None:
    """img2dataset's own output (its verify_hash included) is a shard set poisonlab reads as it is."""
    rows = [(f"/img/{i}.jpg", _sha(IMAGES[i])) for i in range(4)] + [
        ("/missing.jpg", _sha(b"x")), ("/page.html", _sha(ROUTES["/page.html"].body)), ("/swapped.jpg", _sha(IMAGES[9]))]
    pq.write_table(pa.table({"url": [server.url(p) for p, _ in rows], "caption": [f"c{i}" for i in range(len(rows))],
                             "sha256": [h for _, h in rows]}), tmp_path / "urls.parquet")
    out = tmp_path / "i2d"
    with img2dataset_environment(MAX_PIXELS), redirect_output(tmp_path / "log.txt"):
        from img2dataset import download

        download(url_list=str(tmp_path / "urls.parquet"), output_folder=str(out), input_format="parquet",
                 caption_col="caption", verify_hash=["sha256", "sha256"], output_format="webdataset",
                 processes_count=1, thread_count=4, image_size=64, timeout=2, number_sample_per_shard=4)
    read = [s for shard in list_shards(out) for s in read_shard(out, shard)]
    assert sorted(s.key for s in read) == [f"{i // 4:05d}{i % 4}" for i in range(len(rows))]
    live = [s for s in read if s.is_live]
    assert len(live) == 4 and all(s.payload and s.text.startswith("c") for s in live)
    reasons = sorted(s.reason.split(":")[0] for s in read if not s.is_live)
    assert reasons == ["failed_to_download", "failed_to_download", "failed_to_resize"]
    summary = summarize(out)
    assert summary["samples"] == len(rows) and summary["live"] == 4
    assert summary["hash_mismatch"] == 1  # img2dataset's own "hash mismatch" error
    assert summary["reasons"]["failed_to_download: HTTP Error 404"] == 1
