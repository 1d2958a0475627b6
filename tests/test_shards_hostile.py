"""Hostile shards: every case ends as a quarantined sample with a reason or a shard-level error, never a
crash of the run, never a lost sample, and never an executed pickle."""

from __future__ import annotations

import json
import pickle
import resource
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from hostile import CASES, HostileCase, malicious_pickle, png_bomb, write_hostile_shards, write_pickle_tar

from poisonlab.pipelines.accounting import ShardStats
from poisonlab.pipelines.executor import run_local
from poisonlab.pipelines.registry import get_registry
from poisonlab.shards.images import ImageError, decode_image
from poisonlab.shards.layout import list_shards, stats_path, tar_path
from poisonlab.shards.plan import plan_folder_tasks
from poisonlab.shards.reader import ReadPolicy, ReadReport, audit_tar, read_shard


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Hostile input shards, run once through read -> validate_images -> write."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "PICKLE_WAS_EXECUTED"
    cases = write_hostile_shards(root / "in", marker)
    validate = get_registry("stage").create("validate_images")
    stats = run_local(plan_folder_tasks(root / "in", root / "out", [validate]))  # must not raise
    return {"root": root, "marker": marker, "cases": cases, "stats": {s.shard: s for s in stats}}


def _rows(out: Path, shard: str) -> list[dict]:
    return pq.read_table(out / f"{shard}.parquet").to_pylist()


@pytest.mark.parametrize("name", list(CASES))
def test_case_is_quarantined_with_its_reason(hostile: dict, name: str) -> None:
    case: HostileCase = hostile["cases"][name]
    out = hostile["root"] / "out"
    rows = _rows(out, case.shard)
    for key, reason in case.expected:
        matching = [r for r in rows if r["key"] == key and r["status"] == "error"]
        assert matching, f"{name}: no error row for {key!r} in {[(r['key'], r['status']) for r in rows]}"
        assert any(reason in r["reason"] for r in matching), [r["reason"] for r in matching]
        assert all(r["reason"].startswith(f"{case.caught_by}: ") for r in matching), [r["reason"] for r in matching]
    with open(tar_path(out, case.shard), "rb"):
        written = {s.key for s in read_shard(out, case.shard) if s.is_live}
    for key in case.good:
        assert any(r["key"] == key and r["status"] == "ok" for r in rows), f"{name}: good sample {key} lost"
        assert key in written
    bad = {k for k, _ in case.expected} - set(case.good)
    assert not bad & written, f"{name}: quarantined samples reached the output tar"
    errors = hostile["stats"][case.shard].shard_errors
    if case.shard_error:
        assert any(case.shard_error in e for e in errors), errors
    else:
        assert errors == []


@pytest.mark.parametrize("name", list(CASES))
def test_case_books_balance(hostile: dict, name: str) -> None:
    case: HostileCase = hostile["cases"][name]
    out = hostile["root"] / "out"
    stats = ShardStats.from_dict(json.loads(stats_path(out, case.shard).read_text()))
    assert len(_rows(out, case.shard)) == case.input_samples == stats.samples
    assert stats.stages[0].stage == "source" and stats.stages[0].inputs == case.input_samples
    assert all(s.balanced for s in stats.stages)
    assert stats.accounting_problems() == []
    assert sum(stats.by_status.values()) == case.input_samples


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """The payload really executes when unpickled, so the checks below can fail."""
    marker = tmp_path / "executed"
    pickle.loads(malicious_pickle(marker))  # noqa: S301 - our own payload, on purpose
    assert marker.exists()


def test_plain_webdataset_would_unpickle_it(tmp_path: Path) -> None:
    """webdataset's default decoders do run the pickle: the path the reader must keep closed."""
    marker = tmp_path / "executed"
    write_pickle_tar(tmp_path / "00000.tar", marker)
    for _ in wds.WebDataset(str(tmp_path / "00000.tar"), shardshuffle=False).decode():
        pass
    assert marker.exists()


def test_no_pickle_ever_executed(hostile: dict) -> None:
    out = hostile["root"] / "out"
    for shard in list_shards(out):  # even a plain WebDataset pipeline over the outputs finds nothing to run
        for _ in wds.WebDataset(str(tar_path(out, shard)), shardshuffle=False).decode():
            pass
    assert not hostile["marker"].exists()


def test_outputs_hold_only_safe_members(hostile: dict) -> None:
    out = hostile["root"] / "out"
    assert sorted(list_shards(out)) == sorted(c.shard for c in hostile["cases"].values())
    for shard in list_shards(out):
        assert audit_tar(tar_path(out, shard)) == []
    problems = audit_tar(hostile["root"] / "in" / f"{hostile['cases']['pickle_member'].shard}.tar")
    assert any(".pyd" in p for p in problems)


def test_reader_alone_leaves_the_body_check_to_validate_images(hostile: dict) -> None:
    case = hostile["cases"]["corrupt_jpeg_body"]
    samples = {s.key: s for s in read_shard(hostile["root"] / "in", case.shard)}
    assert samples[case.expected[0][0]].is_live  # the header is fine: only a full decode finds the damage


def test_bomb_is_refused_before_any_pixel_is_decoded() -> None:
    bomb = png_bomb()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="decompression_bomb"):
        decode_image(bomb)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, f"decoding a bomb grew the peak memory by {grown_mb:.0f} MB"


@pytest.mark.parametrize("name", list(CASES))
def test_reading_only_some_keys_gives_those_samples_as_a_full_read_does(hostile: dict, name: str) -> None:
    """A federated client's read (``keys``) of a hostile shard: each kept sample, its status and reason, and
    the kinds of the shard's problems are those of the unfiltered read; no other key is returned. (A problem
    inside an unread member says less: a cut member that was skipped, not read, cannot say how much was there.)"""
    import random

    folder, shard = hostile["root"] / "in", hostile["cases"][name].shard
    full_report = ReadReport()
    full = list(read_shard(folder, shard, ReadPolicy(), full_report))
    every = sorted({s.key for s in full})
    for seed in range(4):
        keys = frozenset(random.Random(seed).sample(every, min(len(every), len(every) // 2 + seed % 2)))
        part_report = ReadReport()
        part = list(read_shard(folder, shard, ReadPolicy(), part_report, keys=keys))
        assert [(s.key, s.status, s.reason, s.payload, s.text) for s in part] == \
            [(s.key, s.status, s.reason, s.payload, s.text) for s in full if s.key in keys], seed
        kinds = [[problem.split(":")[0] for problem in r.shard_errors] for r in (part_report, full_report)]
        assert kinds[0] == kinds[1]
    assert not hostile["marker"].exists()
