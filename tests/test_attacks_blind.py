"""Blind copies (``poisonlab export --blind``): nothing in the copy tells poisoned samples apart, while recall
with the poisoned folder's manifest on the copy's scores is what it is on the poisoned folder; and fields of
``KEY.json`` that an attack made stale are rewritten in every copy."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import files, make_synth, one_line_error
from PIL import Image

from poisonlab.attacks import blind_job, poison_local, read_manifest
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.filters.embed import EmbedConfig
from poisonlab.filters.metrics import recall_report
from poisonlab.filters.pipeline import embed_shards
from poisonlab.filters.scan import scan
from poisonlab.models.zoo import ModelSpec
from poisonlab.pipelines.job import run_job_local
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.layout import list_shards
from poisonlab.shards.writer import ShardWriter

RECIPE = {"seed": 5, "attacks": [
    {"id": "patch", "attack": "badnets", "target": "red circle", "count": 10},
    {"id": "phrase", "attack": "text_trigger", "count": 6, "params": {"phrase": "zx"}},
    {"id": "swap", "attack": "text_trigger", "target": "blue square", "count": 4,
     "params": {"phrase": "qv", "dirty_label": True}},
]}
DETECTORS = {"kdist": {"k": 8}, "caption_frequency": {}}
CATEGORICAL = 40  # a column with fewer distinct values than this is compared value by value


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = make_synth(tmp_path_factory.mktemp("blind") / "shards", samples=240, per_shard=60)
    out = src.parent / "poisoned"
    assert poison_local(src, out, parse_recipe(RECIPE))["poisoned"] == 20
    return out


@pytest.fixture(scope="module")
def blind(poisoned: Path) -> Path:
    out = poisoned.parent / "blind"
    run_job_local(blind_job(poisoned, out))
    return out


def _members(directory: Path) -> dict[str, dict[str, bytes]]:
    """key -> extension -> member bytes, over every tar (read as bytes, never unpickled)."""
    out: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard in list_shards(directory):
        with tarfile.open(directory / f"{shard}.tar") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                out[key][ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
    return out


def _leaks(rows: dict[str, dict[str, Any]], poisoned: set[str]) -> list[str]:
    """Fields whose presence, type or (categorical) value set on poisoned rows is not seen on clean rows."""
    problems = []
    fields = {f for row in rows.values() for f in row}
    for field in sorted(fields):
        bad = [rows[k].get(field, "<absent>") for k in rows if k in poisoned]
        good = [rows[k].get(field, "<absent>") for k in rows if k not in poisoned]
        kinds = lambda values: {type(v).__name__ if v != "<absent>" else v for v in values}  # noqa: E731
        if not kinds(bad) <= kinds(good):
            problems.append(f"{field}: kinds {kinds(bad) - kinds(good)} only on poisoned rows")
        distinct = {json.dumps(v, sort_keys=True) for v in bad + good}
        if len(distinct) < CATEGORICAL:
            only = {json.dumps(v, sort_keys=True) for v in bad} - {json.dumps(v, sort_keys=True) for v in good}
            if only:
                problems.append(f"{field}: values {sorted(only)} only on poisoned rows")
    return problems


def test_blind_copy_reveals_nothing_and_recall_is_unchanged(poisoned: Path, blind: Path, tmp_path: Path) -> None:
    keys = {r["key"] for r in read_manifest(poisoned).to_pylist()}
    assert len(keys) == 20 and not (blind / "_run").exists()
    assert {p.name for p in blind.iterdir()} == {p.name for p in poisoned.iterdir()
                                                 if p.suffix in (".tar", ".parquet") or p.name.endswith("_stats.json")
                                                 } | {"sizes.json", "dataset.json"}
    # the poisoned folder does tell them apart (the check below would catch it)
    poisoned_sidecars = {r["key"]: r for s in list_shards(poisoned) for r in pq.read_table(poisoned / f"{s}.parquet").to_pylist()}
    assert _leaks(poisoned_sidecars, keys)
    # tar members: the same extensions per sample, JSON fields and JPEG encodings alike
    members = _members(blind)
    assert keys <= set(members) and len({tuple(sorted(m)) for m in members.values()}) == 1
    metas = {k: json.loads(m["json"]) for k, m in members.items()}
    assert not _leaks(metas, keys)
    quant = {k: json.dumps(Image.open(io.BytesIO(m["jpg"])).quantization, sort_keys=True) for k, m in members.items()}
    assert {quant[k] for k in keys} <= {quant[k] for k in members if k not in keys}
    # sidecars: the same columns in every shard, no column whose values set poisoned rows apart
    sidecars = [pq.read_table(blind / f"{s}.parquet") for s in list_shards(blind)]
    assert len({tuple(t.column_names) for t in sidecars}) == 1
    rows = {r["key"]: r for t in sidecars for r in t.to_pylist()}
    assert not _leaks(rows, keys) and {r["status"] for r in rows.values()} == {"ok"}
    assert all(r["touched_by"] is None and r["provenance"] is None for r in rows.values())
    for shard in list_shards(blind):  # every input sample accounted for, no trail of the poisoning stage
        stats = json.loads((blind / f"{shard}_stats.json").read_text())
        source = json.loads((poisoned / f"{shard}_stats.json").read_text())
        assert stats["samples"] == source["samples"] == stats["written"] and stats["by_status"] == {"ok": stats["samples"]}
        assert stats["source"] is None and [s["stage"] for s in stats["stages"]] == ["source"]
    # same samples, same bytes: the scores of the copy measure the filter exactly as on the poisoned folder
    for key, m in _members(poisoned).items():
        assert {e: m[e] for e in m if e != "json"} == {e: members[key][e] for e in members[key] if e != "json"}
    reports = []
    for name, folder in (("poisoned", poisoned), ("blind", blind)):
        store = embed_shards(folder, tmp_path / f"emb-{name}", EmbedConfig(ModelSpec("poisonlab-tiny-32"), batch_size=64))
        scan(Path(store["store"]), DETECTORS, tmp_path / f"scores-{name}")
        reports.append(recall_report(tmp_path / f"scores-{name}", poisoned, out=None))
    for detector in DETECTORS:
        aurocs = [r["detectors"][detector]["all"]["auroc"] for r in reports]
        assert reports[0]["positives"] == 20 and aurocs[0] == pytest.approx(aurocs[1], abs=1e-12)


def test_export_is_deterministic_and_needs_blind(cli, poisoned: Path, blind: Path, tmp_path: Path) -> None:
    from poisonlab.flows.cli.app import app

    res = cli.invoke(app, ["export", "--blind", "--in", str(poisoned), "--out", str(tmp_path / "again"),
                           "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added"] == 0 and files(tmp_path / "again") == files(blind)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps(RECIPE))  # JSON is YAML
    res = cli.invoke(app, ["poison", "--in", str(poisoned.parent / "shards"), "--out", str(tmp_path / "p"), "--recipe",
                           str(recipe), "--blind-out", str(tmp_path / "b"), "--executor", "local"])
    assert res.exit_code == 0, res.output
    assert "blind copy of 240 samples" in res.stdout and files(tmp_path / "b") == files(blind)  # bytes, not paths
    one_line_error(cli.invoke(app, ["export", "--in", str(poisoned), "--out", str(tmp_path / "plain")]), "--blind")
    one_line_error(cli.invoke(app, ["export", "--blind", "--in", str(tmp_path / "none"), "--out", str(tmp_path / "x")]))


def test_added_samples_are_counted_for_the_warning(tmp_path: Path) -> None:
    from poisonlab.attacks.blind import added_samples

    assert added_samples(tmp_path) == 0  # no manifest
    run_file = tmp_path / "_run" / "manifest.parquet"
    run_file.parent.mkdir()
    pq.write_table(pa.table({"key": ["a", "b", "c"], "change": ["added", "modified", "added"]}), run_file)
    assert added_samples(tmp_path) == 2


def _img2dataset_like(directory: Path) -> Path:
    """One shard whose KEY.json holds what img2dataset writes: caption, sha256, original size, url."""
    from poisonlab.shards.images import encode_image
    from poisonlab.shards.synth import SynthSource, SynthSpec

    source = SynthSource(SynthSpec(samples=40, seed=1, samples_per_shard=40, partial_rate=0, noise_rate=0, junk_rate=0))
    with ShardWriter(directory, "00000") as writer:
        for s in source("00000", []):
            payload = encode_image(Image.open(io.BytesIO(s.payload)).convert("RGB"), "jpg")
            meta = {"caption": s.text, "sha256": hashlib.sha256(payload).hexdigest(), "url": f"http://x/{s.key}.jpg",
                    "original_width": 64, "original_height": 48, "class": s.meta["class"]}
            writer.write(Sample(key=s.key, payload=payload, text=s.text, meta=meta))
        writer.close()
    return directory


@pytest.mark.parametrize("attack, params, image_changes", [
    ("badnets", {}, True), ("text_trigger", {"phrase": "zx"}, False),
])
def test_stale_key_json_fields_are_rewritten(tmp_path: Path, attack: str, params: dict, image_changes: bool) -> None:
    src = _img2dataset_like(tmp_path / "src")
    recipe = {"seed": 0, "attacks": [{"attack": attack, "target": "red circle" if attack == "badnets" else None,
                                      "count": 5, "params": params}]}
    out = tmp_path / "out"
    poison_local(src, out, parse_recipe(recipe))
    before, after = _members(src), _members(out)
    keys = {r["key"] for r in read_manifest(out).to_pylist()}
    assert len(keys) == 5
    for key, m in after.items():
        meta = json.loads(m["json"])
        if key not in keys:
            assert m == before[key]  # untouched samples: byte for byte
            continue
        assert meta["caption"] == m["txt"].decode() != json.loads(before[key]["json"])["caption"]
        assert meta["sha256"] == hashlib.sha256(m["jpg"]).hexdigest()
        assert (meta["sha256"] != json.loads(before[key]["json"])["sha256"]) is image_changes
        width, height = Image.open(io.BytesIO(m["jpg"])).size
        expected = (width, height) if image_changes else (64, 48)
        assert (meta["original_width"], meta["original_height"]) == expected
        assert meta["url"] == json.loads(before[key]["json"])["url"] and "poisonlab" in meta
