"""Shard reading and writing: layout, determinism, atomicity, sidecars, and reading what others wrote."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from poisonlab.pipelines.executor import run_local
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import FilterStage, MapStage, ShardContext
from poisonlab.shards.images import encode_image
from poisonlab.shards.layout import is_complete, list_shards, remove_temp_files, temp_files
from poisonlab.shards.plan import finalize_folder, plan_folder_tasks, plan_source_tasks
from poisonlab.shards.reader import ReadPolicy, read_shard, split_member_name
from poisonlab.shards.sidecar import CHUNK_ROWS, MAX_EXTRA_COLUMNS, SIDECAR_SCHEMA
from poisonlab.shards.summary import summarize
from poisonlab.shards.tarformat import member_header
from poisonlab.shards.writer import ShardWriter

JPEG = encode_image(np.full((8, 8, 3), 200, dtype=np.uint8))


def sample(i: int, **kw) -> Sample:  # type: ignore[no-untyped-def]
    fields = {"key": f"00000{i:04d}", "payload": JPEG, "text": f"caption {i}", "meta": {"label": i, "url": f"u{i}"}}
    fields.update(kw)
    return Sample(**fields)


def write(directory: Path, samples: list[Sample], shard: str = "00000") -> dict:
    with ShardWriter(directory, shard) as writer:
        for s in samples:
            writer.write(s)
        return writer.close().to_dict()


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize(("name", "expected"), [
    ("000010002.jpg", ("000010002", "jpg")),
    ("dir.v1/sub/key.seg.JSON", ("dir.v1/sub/key", "seg.json")),
    ("noext", ("noext", "")),
    ("a/b.c.d", ("a/b", "c.d")),
])
def test_member_names_split_like_webdataset(name: str, expected: tuple[str, str]) -> None:
    assert split_member_name(name) == expected


def test_same_samples_same_bytes(tmp_path: Path) -> None:
    samples = [sample(i) for i in range(20)] + [sample(20).errored("read", "broken: x")]
    write(tmp_path / "a", samples)
    write(tmp_path / "b", samples)
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_tar_is_plain_gnu_tar_with_fixed_metadata(tmp_path: Path) -> None:
    long_key = "d/" + "k" * 120
    write(tmp_path, [sample(0), sample(1, key=long_key, text="ünïcode ✓")])
    with tarfile.open(tmp_path / "00000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["000000000.jpg", "000000000.txt", "000000000.json",
                                             f"{long_key}.jpg", f"{long_key}.txt", f"{long_key}.json"]
        assert {(m.mtime, m.mode, m.uid, m.gid, m.uname, m.type) for m in members} == {(0, 0o444, 0, 0, "", b"0")}
        assert tar.extractfile(members[4]).read().decode() == "ünïcode ✓"
    # each header is what tarfile itself writes for the same member
    for name, size in [("000000000.jpg", len(JPEG)), (f"{long_key}.txt", 12)]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o444
        assert member_header(name, size) == info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def test_round_trip_through_reader(tmp_path: Path) -> None:
    originals = [sample(i) for i in range(5)]
    write(tmp_path, originals)
    back = list(read_shard(tmp_path, "00000"))
    assert [(s.key, s.payload, s.text) for s in back] == [(s.key, s.payload, s.text) for s in originals]
    assert back[0].meta == {"label": 0, "url": "u0", "width": 8, "height": 8}
    assert all(s.status == "ok" for s in back)


class Boom(MapStage):
    name = "boom"

    def map(self, sample: Sample, ctx: ShardContext) -> Sample:
        return sample

    def process(self, samples: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        for i, s in enumerate(samples):
            if i == 7:
                raise RuntimeError("the stage died mid-shard")
            yield s


def test_an_exception_inside_the_writer_leaves_no_final_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "00003") as writer:
        writer.write(sample(0))
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(tmp_path, "00004") as writer:  # forgetting close() is not a commit either
        writer.write(sample(0))
    assert list(tmp_path.iterdir()) == []


def test_a_stage_dying_mid_shard_commits_nothing(tmp_path: Path, tiny_shards: Path) -> None:
    with pytest.raises(RuntimeError, match="died mid-shard"):
        run_local(plan_folder_tasks(tiny_shards, tmp_path / "out", [Boom()]))
    assert list((tmp_path / "out").iterdir()) == []


def test_sidecar_has_a_row_per_sample_in_a_fixed_schema(tmp_path: Path) -> None:
    samples = [
        sample(0),
        sample(1).changed("attack", meta={"label": 1, "poisonlab": {"attack": "badnets", "target": 3}}),
        sample(2).dropped("filter", "too_similar: 0.99"),
        sample(3, payload=None).errored("read", "missing_payload: no image"),
    ]
    stats = write(tmp_path, samples)
    table = pq.read_table(tmp_path / "00000.parquet")
    assert table.schema.names[: len(SIDECAR_SCHEMA)] == SIDECAR_SCHEMA.names
    assert table.schema.field("width").type == pa.int64() and table.schema.field("reason").type == pa.string()
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "changed", "dropped", "error"]
    assert rows[1]["touched_by"] == "attack" and json.loads(rows[1]["provenance"]) == {"attack": "badnets", "target": 3}
    assert rows[2]["reason"] == "filter: too_similar: 0.99" and rows[2]["sha256"] is not None
    assert rows[3]["sha256"] is None and rows[3]["bytes"] is None
    assert rows[0]["width"] == 8 and rows[0]["label"] == 0 and rows[0]["url"] == "u0"
    assert stats["written"] == 2 and stats["samples"] == 4
    assert stats["reasons"] == {"filter: too_similar": 1, "read: missing_payload": 1}
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert {m.name.split(".")[0] for m in tar} == {"000000000", "000000001"}
        meta = json.loads(tar.extractfile("000000001.json").read())
    assert meta["poisonlab"] == {"attack": "badnets", "target": 3}


def test_sidecars_of_a_dataset_read_as_one_table(tmp_path: Path) -> None:
    write(tmp_path, [sample(i) for i in range(3)], "00000")
    write(tmp_path, [sample(i).errored("read", "x: y") for i in range(3, 5)], "00001")  # reason, no width
    table = pads.dataset(sorted(str(p) for p in tmp_path.glob("*.parquet")), format="parquet").to_table()
    assert table.num_rows == 5
    con = duckdb.connect()
    got = con.execute(f"select status, count(*) from read_parquet('{tmp_path}/*.parquet') group by 1 order by 1").fetchall()
    assert got == [("error", 2), ("ok", 3)]


def test_metadata_columns_are_capped_and_typed_per_shard(tmp_path: Path) -> None:
    many = {f"k{i}": i for i in range(MAX_EXTRA_COLUMNS + 50)}
    rows = [sample(0, meta=many)]
    rows += [sample(i, meta={"mixed": i}) for i in range(1, CHUNK_ROWS + 1)]
    rows += [sample(CHUNK_ROWS + 1, meta={"mixed": "text", "nested": {"a": [1, 2]}, "key": "clash", "bad name!": 1})]
    write(tmp_path, rows)
    table = pq.read_table(tmp_path / "00000.parquet")
    extra = [n for n in table.schema.names if n not in SIDECAR_SCHEMA.names]
    assert len(extra) == MAX_EXTRA_COLUMNS
    assert table.num_rows == len(rows)


def test_invalid_and_duplicate_keys_become_error_rows(tmp_path: Path) -> None:
    stats = write(tmp_path, [sample(0), sample(1, key="has.dot"), sample(2, key="../up"), sample(0),
                             sample(3, key=""), sample(4, payload_ext="../x")])
    rows = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error", "error", "error"]
    assert rows[3]["reason"].startswith("write: duplicate_key")
    assert all(r["reason"].startswith("write: invalid_") for r in rows[1:3] + rows[4:])
    assert stats["written"] == 1
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert len(tar.getmembers()) == 3


def test_img2dataset_failures_are_carried_with_their_reason(tmp_path: Path) -> None:
    """img2dataset lists failed downloads only in its sidecar; they come through as error rows."""
    write(tmp_path / "in", [sample(0), sample(2)])
    pq.write_table(pa.table({
        "key": ["000000000", "000000001", "000000002"],
        "url": ["http://a/0.jpg", "http://a/1.jpg", "http://a/2.jpg"],
        "caption": ["c0", "c1", "c2"],
        "status": ["success", "failed_to_download", "success"],
        "error_message": [None, "HTTP Error 404: Not Found", None],
    }), tmp_path / "in" / "00000.parquet")
    out = list(read_shard(tmp_path / "in", "00000"))
    assert [(s.key, s.status) for s in out] == [("000000000", "ok"), ("000000002", "ok"), ("000000001", "error")]
    assert out[2].reason == "failed_to_download: HTTP Error 404: Not Found"
    assert out[2].meta["url"] == "http://a/1.jpg" and out[2].text == "c1"


class DropOdd(FilterStage):
    name = "drop_odd"

    def reject(self, sample: Sample, ctx: ShardContext) -> str | None:
        return "odd: label" if sample.meta["label"] % 2 else None


def test_chained_runs_keep_earlier_reasons(tmp_path: Path) -> None:
    """A second pass over a folder carries the first pass's dropped rows forward unchanged."""
    write(tmp_path / "a", [sample(i).changed("attack", meta={"label": i, "poisonlab": {"n": i}}) for i in range(4)])
    run_local(plan_folder_tasks(tmp_path / "a", tmp_path / "b", [DropOdd()]))
    run_local(plan_folder_tasks(tmp_path / "b", tmp_path / "c", []))
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "c" / "00000.parquet").to_pylist()}
    assert rows["000000001"]["status"] == "dropped" and rows["000000001"]["reason"] == "drop_odd: odd: label"
    assert rows["000000001"]["touched_by"] == "drop_odd"  # status and touched_by describe one pass...
    assert [rows[k]["status"] for k in sorted(rows)] == ["ok", "dropped", "ok", "dropped"]
    assert {k: json.loads(r["provenance"]) for k, r in rows.items()} == {  # ...provenance travels with the sample
        f"00000000{i}": {"n": i} for i in range(4)}


def test_gzip_compressed_tar_reads(tmp_path: Path) -> None:
    write(tmp_path / "plain", [sample(i) for i in range(3)])
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "00000.tar").write_bytes(gzip.compress((tmp_path / "plain" / "00000.tar").read_bytes()))
    assert [s.key for s in read_shard(tmp_path / "gz", "00000") if s.is_live] == ["000000000", "000000001", "000000002"]


def test_tars_from_other_writers_read(tmp_path: Path) -> None:
    """PAX headers, long names and directories, as tarfile and GNU tar write them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo("sub")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in [("sub/" + "ä" * 70 + ".jpg", JPEG), ("sub/" + "ä" * 70 + ".txt", b"hello")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "00000.tar").write_bytes(buf.getvalue())
    [s] = read_shard(tmp_path, "00000")
    assert s.is_live and s.key == "sub/" + "ä" * 70 and s.text == "hello"


def test_output_reads_with_plain_webdataset(tmp_path: Path, tiny_shards: Path) -> None:
    run_local(plan_folder_tasks(tiny_shards, tmp_path, []))
    urls = [str(tmp_path / f"{s}.tar") for s in list_shards(tmp_path)]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "txt", "json"))
    assert len(got) == 240 and got[0][0].size == (32, 32) and isinstance(got[0][1], str)


def test_layout_completion_temp_files_and_sizes(tmp_path: Path) -> None:
    from poisonlab.shards.synth import SynthSource, SynthSpec

    src = SynthSource(SynthSpec(samples=25, samples_per_shard=10))
    stats = run_local(plan_source_tasks(src, src.shards(), tmp_path))
    (tmp_path / ".00009.tar.123-abcd.tmp").write_bytes(b"left by a killed writer")
    assert temp_files(tmp_path) and all(is_complete(tmp_path, s) for s in ("00000", "00001", "00002"))
    finalize_folder(tmp_path, stats)
    assert temp_files(tmp_path) == [] and remove_temp_files(tmp_path) == 0
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 10, "00001.tar": 10, "00002.tar": 5}
    (tmp_path / "00001.parquet").unlink()
    assert not is_complete(tmp_path, "00001")


def test_summary_counts_from_sidecars(tmp_path: Path) -> None:
    write(tmp_path, [sample(0), sample(1).dropped("f", "near_dup: 0.9"), sample(2).errored("read", "empty_image: z")])
    summary = summarize(tmp_path)
    assert summary["samples"] == 3 and summary["live"] == 1 and summary["shards"] == 1
    assert summary["by_status"] == {"dropped": 1, "error": 1, "ok": 1}
    assert summary["reasons"] == {"f: near_dup": 1, "read: empty_image": 1}
    with pytest.raises(FileNotFoundError):
        summarize(tmp_path / "nope")


def test_non_image_payloads_need_an_explicit_policy(tmp_path: Path) -> None:
    """The core carries any payload; the reader accepts non-image ones only when a policy says so."""
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.int16), allow_pickle=False)
    stats = write(tmp_path, [Sample(key="g0", payload=buf.getvalue(), payload_ext="graph.npy", text="a graph")])
    assert stats["written"] == 1
    [default] = read_shard(tmp_path, "00000")
    assert default.status == "error" and "refused_member: .graph.npy" in default.reason
    [opted] = read_shard(tmp_path, "00000", ReadPolicy(payload_extensions=frozenset({"graph.npy"})))
    assert opted.is_live and opted.payload_ext == "graph.npy"
    assert np.load(io.BytesIO(opted.payload), allow_pickle=False).tolist() == list(range(6))
