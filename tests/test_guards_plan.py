"""Issue 11, finding 1: the poisoning plan and the run agree by construction.

The planner counts samples live from the sidecars without decoding them; the run-time reader may refuse
some of them. ``poisonlab poison`` must then finish (exit 0), report each refused planned sample as failed
with its reason, and a rerun must finish too.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hostile import GOOD_CAPTION, good_jpeg, write_hostile_shards
from PIL import Image
from typer.testing import CliRunner

from poisonlab.flows.cli import app
from poisonlab.shards.layout import list_shards


def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sample(key: str, image: bytes | None = None, meta: bytes = b"{}") -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", good_jpeg(1) if image is None else image), (f"{key}.txt", GOOD_CAPTION.encode()),
            (f"{key}.json", meta)]


def _sidecar(path: Path, keys: list[str]) -> None:
    pq.write_table(pa.table({"key": keys, "caption": [GOOD_CAPTION] * len(keys), "status": ["success"] * len(keys)}),
                   path)


def write_more_hostile(directory: Path, first: int) -> int:
    """Cases the planner cannot see from a sidecar: wrong formats named .jpg, an empty key, deep JSON."""
    cases = {
        "gif": _sample("k_gif", _image("GIF")),
        "tiff": _sample("k_tiff", _image("TIFF")),
        "text": _sample("k_text", b"this is not an image at all"),
        "empty_key": _sample(""),
        "deep_json": _sample("k_deep", meta=b'{"a":' + b"[" * 970 + b"]" * 970 + b"}"),
        "listed_not_in_tar": [],
    }
    for offset, bad in enumerate(cases.values()):
        shard = f"{first + offset:05d}"
        good = [f"{shard}_good{i}" for i in range(2)]
        members = _sample(good[0]) + bad + _sample(good[1])
        keys = sorted({m[0].rpartition(".")[0].split(".")[0] for m in members} | {f"{shard}_ghost"})
        _tar(directory / f"{shard}.tar", members)
        _sidecar(directory / f"{shard}.parquet", keys)
    return first + len(cases)


def _books(out: Path) -> tuple[int, int]:
    """(input samples, sidecar rows) over every output shard; both must be equal and the stages balanced."""
    inputs = rows = 0
    for shard in list_shards(out):
        stats = json.loads((out / f"{shard}_stats.json").read_text())
        for stage in stats["stages"]:
            assert stage["inputs"] == stage["kept"] + stage["changed"] + stage["dropped"] + stage["errored"], stage
        inputs += stats["stages"][0]["inputs"] + sum(s["added"] for s in stats["stages"][1:])
        rows += pq.read_metadata(out / f"{shard}.parquet").num_rows
    return inputs, rows


def _poison(cli: CliRunner, src: Path, out: Path, *extra: str) -> dict:
    res = cli.invoke(app, ["poison", "--in", str(src), "--out", str(out), "--attack", "badnets", "--rate", "1.0",
                           "--target", "red circle", "--executor", "local", "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_poison_over_the_hostile_corpus_finishes_and_accounts_for_every_planned_sample(cli, tmp_path):
    src = tmp_path / "hostile"
    cases = write_hostile_shards(src, tmp_path / "marker")
    write_more_hostile(src, len(cases))
    out = tmp_path / "out"
    result = _poison(cli, src, out)
    spec = json.loads((out / "attack.json").read_text())
    planned = sum(a["planned"] for a in spec["attacks"])
    manifest = pq.read_table(out / "_run" / "manifest.parquet")
    assert manifest.num_rows == result["poisoned"]
    assert planned == result["poisoned"] + result["failed"] and result["failed"] > 0
    assert sum(result["failed_reasons"].values()) == result["failed"]
    assert {"read: undecodable_image", "read: missing_from_tar"} <= set(result["failed_reasons"])
    assert json.loads((out / "poison.json").read_text())["failed"] == result["failed"]
    inputs, rows = _books(out)
    assert inputs == rows
    for case in cases.values():  # every input sample of the hostile shards has its sidecar row
        assert pq.read_metadata(out / f"{case.shard}.parquet").num_rows == case.input_samples, case.name
    again = _poison(cli, src, out)  # a rerun skips every shard and finishes with the same books
    assert again == result
    assert not (tmp_path / "marker").exists()


def test_an_imported_huge_caption_is_a_failed_planned_sample_not_a_crash(cli, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(images / f"img{i}.png")
        (images / f"img{i}.txt").write_text("a red circle" if i != 1 else "spam " * 210_000)
    shards = tmp_path / "shards"
    res = cli.invoke(app, ["import", "--images", str(images), "--out", str(shards), "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    result = _poison(cli, shards, tmp_path / "out")
    assert result["poisoned"] + result["failed"] == result["attacks"]["badnets"]["planned"]
