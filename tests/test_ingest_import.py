"""Local import: image folders with .txt captions or a captions table, into the same shard layout."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import poisonlab.flows.cli.ingest  # noqa: F401  (registers the import command on the app)
from poisonlab.flows.cli import app
from poisonlab.flows.ingest import import_folder
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.pipelines.job import run_job_local
from poisonlab.shards.layout import list_shards
from poisonlab.shards.local_import import ImportSpec, import_job, prepare_import
from poisonlab.shards.parts import PlanError
from poisonlab.shards.reader import read_shard
from poisonlab.shards.urllists import UrlListError

LOCAL = RunnerSpec(executor="local", progress=False)


def _image(path: Path, size: int = 16, value: int = 100, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.png", "no_caption.png", "empty.png", "huge.png"]):
        _image(root / name, size=64 if name == "huge.png" else 16, value=20 * i,
               fmt="JPEG" if name.endswith(".jpg") else "PNG")
    (root / "truncated.png").write_bytes((root / "b.png").read_bytes()[:40])
    for name, caption in [("b", "a b"), ("a", "an a\n"), ("sub/c", "a c"), ("empty", "  "), ("truncated", "cut"),
                          ("huge", "big")]:
        (root / f"{name}.txt").write_text(caption)
    (root / "notes.md").write_text("not an image, not listed: ignored")
    return root


def _rows(out: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))]).to_pylist()


def test_pairs_of_image_and_txt(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = import_folder(ImportSpec(images=folder, out=out, samples_per_shard=3, max_pixels=32 * 32), LOCAL)
    rows = _rows(out)
    files = [r["source_file"] for r in rows]
    assert files == sorted(files) == ["a.jpg", "b.png", "empty.png", "huge.png", "no_caption.png", "sub/c.png",
                                      "truncated.png"]
    assert [r["key"] for r in rows] == ["000000", "000001", "000002", "000010", "000011", "000012", "000020"]
    outcome = {r["source_file"]: (r["status"], (r["reason"] or "").split(":")[1].strip() if r["reason"] else None)
               for r in rows}
    assert outcome == {
        "a.jpg": ("ok", None), "b.png": ("ok", None), "sub/c.png": ("ok", None),
        "empty.png": ("dropped", "empty_caption"), "no_caption.png": ("error", "missing_caption"),
        "huge.png": ("error", "decompression_bomb"), "truncated.png": ("error", "undecodable_image"),
    }
    assert record["written"] == 3 and record["samples"] == 7
    samples = {s.meta["source_file"]: s for sh in list_shards(out) for s in read_shard(out, sh) if s.is_live}
    assert samples["a.jpg"].text == "an a" and samples["a.jpg"].payload_ext == "jpg"
    assert samples["b.png"].payload == (folder / "b.png").read_bytes()  # stored as is, never re-encoded
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 1, "00002.tar": 0}


def test_imports_are_byte_identical(folder: Path, tmp_path: Path) -> None:
    outs = [tmp_path / f"out{i}" for i in range(2)]
    for out in outs:
        import_folder(ImportSpec(images=folder, out=out, samples_per_shard=4), LOCAL)
    for name in ("00000.tar", "00000.parquet", "00001.tar", "00001.parquet"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_captions_table_by_file_name(folder: Path, tmp_path: Path, fmt: str) -> None:
    table = pa.table({
        "path": ["b.png", "sub/c.png", "missing.png", "../outside.png", "b.png", "notes.md"],
        "text": ["bee", "sea", "gone", "escape", "again", "markdown"],
        "source": ["s1", "s2", "s3", "s4", "s5", "s6"],
    })
    captions = tmp_path / f"captions.{fmt}"
    if fmt == "csv":
        table.to_pandas().to_csv(captions, index=False)
    elif fmt == "parquet":
        pq.write_table(table, captions)
    else:
        captions.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    out = tmp_path / "out"
    import_folder(ImportSpec(images=folder, out=out, captions=captions, file_col="path", caption_col="text"), LOCAL)
    rows = _rows(out)
    outcome = [(r["source_file"], r["status"], r["reason"].split(":")[1].strip() if r["reason"] else None)
               for r in rows]
    assert outcome == [
        ("a.jpg", "error", "missing_caption"), ("b.png", "ok", None), ("empty.png", "error", "missing_caption"),
        ("huge.png", "error", "missing_caption"), ("missing.png", "error", "missing_image"),
        ("no_caption.png", "error", "missing_caption"), ("notes.md", "error", "unsupported_image_format"),
        ("sub/c.png", "ok", None), ("truncated.png", "error", "missing_caption"),
        ("../outside.png", "error", "unsafe_path"), ("b.png", "dropped", "duplicate_file"),
    ]
    assert rows[1]["caption"] == "bee" and rows[1].get("source") == "s1", rows[1]  # extra columns travel with the row
    assert len(rows) == 11


def test_bad_captions_tables_fail_before_any_work(folder: Path, tmp_path: Path) -> None:
    captions = tmp_path / "c.csv"
    captions.write_text("name,caption\nb.png,x\n")
    with pytest.raises(UrlListError, match="no column 'file'"):
        import_folder(ImportSpec(images=folder, out=tmp_path / "o", captions=captions), LOCAL)
    assert not (tmp_path / "o").exists()
    with pytest.raises(UrlListError, match="does not exist"):
        import_folder(ImportSpec(images=tmp_path / "nowhere", out=tmp_path / "o"), LOCAL)
    import_folder(ImportSpec(images=folder, out=tmp_path / "o"), LOCAL)
    with pytest.raises(PlanError):
        import_folder(ImportSpec(images=folder, out=tmp_path / "o", samples_per_shard=2), LOCAL)


def test_import_command(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["import", "--images", str(folder), "--out", str(tmp_path / "o"),
                                      "--executor", "local", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["written"] == 4  # huge.png is within the default pixel cap


def test_an_import_that_wrote_nothing_fails_in_one_line(tmp_path: Path) -> None:
    """Issue 13: a folder without captions used to write 0 of N rows and exit 0."""
    from conftest import one_line_error

    for i in range(3):
        _image(tmp_path / "bare" / f"{i}.png", value=10 * i)
    out = tmp_path / "o"
    res = CliRunner().invoke(app, ["import", "--images", str(tmp_path / "bare"), "--out", str(out),
                                   "--executor", "local", "--json"])
    one_line_error(res, "import wrote 0 of 3 rows", "3 missing_caption", "--captions")
    assert [r["reason"].split(":")[1].strip() for r in _rows(out)] == ["missing_caption"] * 3  # each row says why


# Issue 11, finding 3: import reads only from inside the folder, and every skipped entry gets a row.
@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0:SECRET-OUTSIDE-THE-FOLDER\n")
    _image(secret / "private.png", value=7)
    return secret


def _outcome(out: Path) -> dict[str, tuple[str, str | None]]:
    return {r["source_file"]: (r["status"], r["reason"]) for r in _rows(out)}


def _everything_written(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.glob("*.tar")))


def test_links_and_fifos_are_never_followed(folder: Path, outside: Path, tmp_path: Path) -> None:
    (folder / "a.txt").unlink()
    (folder / "a.txt").symlink_to("/etc/passwd")  # the caption of a.jpg
    (folder / "b.txt").unlink()
    (folder / "b.txt").symlink_to(outside / "passwd")
    (folder / "evil.png").symlink_to(outside / "private.png")
    (folder / "evil.txt").write_text("a caption for a link")
    os.mkfifo(folder / "pipe.png")
    (folder / "pipe.txt").write_text("a caption for a fifo")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    out = tmp_path / "out"
    import_folder(ImportSpec(images=folder, out=out, max_pixels=32 * 32), LOCAL)
    outcome = _outcome(out)
    assert outcome["a.jpg"] == ("error", "import: unsafe_caption: a.txt is a symbolic link (not followed)")
    assert outcome["b.png"] == ("error", "import: unsafe_caption: b.txt is a symbolic link (not followed)")
    assert outcome["evil.png"] == ("error", "import: unsafe_file: evil.png is a symbolic link (not followed)")
    assert outcome["pipe.png"] == ("error", "import: unsafe_file: pipe.png is a FIFO (not followed)")
    assert outcome["linked"] == ("error", "import: unsafe_file: linked is a symbolic link to a directory (not followed)")
    assert outcome["dangling.jpg"] == ("error", "import: unsafe_file: dangling.jpg is a symbolic link (not followed)")
    assert outcome["sub/c.png"] == ("ok", None)
    written = _everything_written(out) + b"".join(p.read_bytes() for p in out.glob("*.parquet"))
    assert b"SECRET-OUTSIDE" not in written and b"root:" not in written
    assert (outside / "private.png").read_bytes() not in _everything_written(out)


def test_hard_links_are_read_only_when_every_link_is_inside(folder: Path, outside: Path, tmp_path: Path) -> None:
    os.link(folder / "b.png", folder / "b_copy.png")
    (folder / "b_copy.txt").write_text("the same image twice")
    os.link(outside / "private.png", folder / "leak.png")
    (folder / "leak.txt").write_text("a link to a file outside")
    os.link(outside / "passwd", folder / "sub" / "c.txt.tmp")
    (folder / "sub" / "c.txt").unlink()
    os.link(outside / "passwd", folder / "sub" / "c.txt")
    out = tmp_path / "out"
    import_folder(ImportSpec(images=folder, out=out), LOCAL)
    outcome = _outcome(out)
    assert outcome["b.png"] == ("ok", None) and outcome["b_copy.png"] == ("ok", None)
    assert outcome["leak.png"] == ("error", "import: unsafe_file: leak.png is a hard link with 2 names, some outside the folder")
    assert outcome["sub/c.png"][1].startswith("import: unsafe_caption: sub/c.txt is a hard link with 3 names")
    assert b"SECRET-OUTSIDE" not in _everything_written(out)


def test_a_file_swapped_for_a_link_after_the_scan_is_not_followed(folder: Path, outside: Path, tmp_path: Path) -> None:
    """The check is on the open descriptor: replacing a planned file by a link before it is read leads nowhere."""
    spec = ImportSpec(images=folder, out=tmp_path / "out")
    plan = prepare_import(spec)
    (folder / "b.png").unlink()
    (folder / "b.png").symlink_to(outside / "private.png")
    (folder / "sub").rename(folder / "sub_real")
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    run_job_local(import_job(plan))
    outcome = _outcome(tmp_path / "out")
    assert outcome["b.png"] == ("error", "import: unsafe_file: b.png is a symbolic link (not followed)")
    assert outcome["sub/c.png"] == ("error", "import: unsafe_file: sub is a symbolic link (not followed)")
    assert (outside / "private.png").read_bytes() not in _everything_written(tmp_path / "out")
