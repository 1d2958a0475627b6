"""The split-view testbed: 1% of the URLs on expired domains serve attacker images.

Without verification the ingested dataset changes in exactly the manifest's keys; with verification
(run as the Prefect flow on Dask) every swapped key is caught and no original image is lost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_synth
from PIL import Image
from typer.testing import CliRunner

import poisonlab.flows.cli.ingest  # noqa: F401  (registers the splitview commands on the app)
from poisonlab.flows.cli import app
from poisonlab.flows.ingest import splitview_build
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.shards.ingest import DownloadOptions, IngestSpec
from poisonlab.shards.layout import list_shards
from poisonlab.shards.reader import read_shard
from poisonlab.shards.splitview import SplitViewSpec, SplitViewWeb, load_items
from poisonlab.shards.urllists import UrlColumns

URLS = 300
SWAPPED = 3  # 1%


@pytest.fixture(scope="module")
def web_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("splitview")
    originals = make_synth(root / "originals", samples=URLS, per_shard=100, image_size=32)
    attacker = root / "attacker"
    attacker.mkdir()
    for i in range(8):  # any image folder will do: a checkerboard patch on flat colours
        pixels = np.full((32, 32, 3), 30 * i, dtype=np.uint8)
        pixels[24:, 24:] = (np.indices((8, 8)).sum(0) % 2 * 255)[..., None]
        Image.fromarray(pixels).save(attacker / f"trigger{i}.png")
    return originals, attacker


def _web(inputs: tuple[Path, Path], **kw) -> SplitViewWeb:
    return SplitViewWeb(load_items(inputs[0]), load_items(inputs[1]), SplitViewSpec(**kw))


def test_the_web_is_keyed_and_swaps_whole_domains(web_inputs: tuple[Path, Path]) -> None:
    web = _web(web_inputs, fraction=0.01, seed=3)
    manifest = web.manifest("http://h")
    assert manifest.num_rows == SWAPPED
    assert manifest.equals(_web(web_inputs, fraction=0.01, seed=3).manifest("http://h"))
    assert not manifest.equals(_web(web_inputs, fraction=0.01, seed=4).manifest("http://h"))
    assert all(a != b for a, b in zip(manifest.column("original_sha256").to_pylist(),
                                      manifest.column("served_sha256").to_pylist(), strict=True))
    grouped = _web(web_inputs, fraction=0.05, seed=3, urls_per_domain=4)
    swapped_domains = {grouped.domain[name] for name in grouped.served}
    assert len(grouped.served) == 4 * len(swapped_domains) >= 0.05 * URLS  # every URL of an expired domain
    original = web.originals[0]
    path = web.path(original)
    assert web.resolve(path).body == (web.served.get(original.name) or original).payload
    assert web.resolve("/nowhere/x.jpg") is None


def _options() -> DownloadOptions:
    return DownloadOptions(resize_mode="no", processes=1, threads=8, timeout=5)


def test_without_verification_exactly_the_manifest_keys_change(web_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "build"
    result = CliRunner().invoke(app, [
        "splitview", "build", "--originals", str(web_inputs[0]), "--attacker", str(web_inputs[1]), "--out", str(out),
        "--fraction", "0.01", "--resize-mode", "no", "--processes", "1", "--threads", "8",
        "--samples-per-shard", "100", "--executor", "local", "--json",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["swapped"] == SWAPPED and report["urls"] == URLS
    assert report["changed_keys_match_manifest"] is True
    assert report["poisoned_written"] == SWAPPED and report["originals_not_written"] == 0
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    shards = out / "shards"
    samples = {s.key: s for shard in list_shards(shards) for s in read_shard(shards, shard)}
    assert all(s.is_live for s in samples.values()) and len(samples) == URLS
    changed = {k for k, s in samples.items() if s.meta["download_sha256"] != s.meta["expected_sha256"]}
    assert changed == {row["key"] for row in manifest}
    for row in manifest:  # the poisoned dataset holds what the attacker served, under the victim's caption
        assert samples[row["key"]].meta["download_sha256"] == row["served_sha256"]
        assert hashlib.sha256(samples[row["key"]].payload).hexdigest() != row["original_sha256"]


def test_verification_catches_every_swap_on_the_prefect_flow(
    web_inputs: tuple[Path, Path], tmp_path: Path, prefect_harness: None
) -> None:
    spec = IngestSpec(urls=Path("unused"), out=Path("unused"), columns=UrlColumns(hash="sha256"), verify=True,
                      download=_options(), samples_per_shard=100)
    report = splitview_build(_web(web_inputs, fraction=0.01), tmp_path / "verified", spec,
                             RunnerSpec(executor="prefect", workers=1, progress=False), log=tmp_path / "i2d.log")
    assert report["swapped"] == SWAPPED and report["verified"] is True
    assert report["recall"] == 1.0 and report["hash_mismatches"] == SWAPPED
    assert report["originals_written"] == URLS - SWAPPED and report["originals_not_written"] == 0
    manifest = pq.read_table(tmp_path / "verified" / "manifest.parquet")
    assert set(manifest.column("ingest_status").to_pylist()) == {"hash_mismatch"}
