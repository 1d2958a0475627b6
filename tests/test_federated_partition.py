"""Partitions: every live sample in exactly one client, keyed (shard order and reruns change nothing), planned
from the sidecars, written atomically with a record that knows its input."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from poisonlab.attacks.index import index_dataset
from poisonlab.federated.partition import RECORD_FILE, TABLE_FILE, client_keys, load_record, make_partition
from poisonlab.federated.rows import LiveRows, live_rows
from poisonlab.federated.schemes import SCHEMES, PartitionError
from poisonlab.shards.layout import sidecar_path

SCHEME_PARAMS = [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("by_shard", {})]


def _table(out: Path) -> pa.Table:
    return pq.read_table(out / TABLE_FILE)


@pytest.mark.parametrize(("scheme", "params"), SCHEME_PARAMS)
def test_every_live_sample_is_in_exactly_one_client(tiny_shards: Path, tmp_path: Path, scheme: str, params: dict) -> None:
    record = make_partition(tiny_shards, tmp_path / "p", clients=3, scheme=scheme, params=params, seed=7)
    table = _table(tmp_path / "p")
    pairs = list(zip(table.column("shard").to_pylist(), table.column("key").to_pylist(), strict=True))
    live = [(s, k) for s, k in zip(live_rows(tiny_shards).shard_of, live_rows(tiny_shards).keys, strict=True)]
    assert sorted(pairs) == sorted(live) and len(set(pairs)) == len(pairs) == 240
    clients = table.column("client").to_pylist()
    assert set(clients) <= {0, 1, 2}
    assert list(record.counts) == [Counter(clients)[c] for c in range(3)] and record.samples == 240
    assert sum(len(k) for c in range(3) for k in client_keys(tmp_path / "p", c).values()) == 240


def test_iid_is_balanced_and_by_shard_keeps_shards_whole(tiny_shards: Path, tmp_path: Path) -> None:
    iid = make_partition(tiny_shards, tmp_path / "iid", clients=7, seed=1)
    assert max(iid.counts) - min(iid.counts) <= 1
    make_partition(tiny_shards, tmp_path / "bs", clients=2, scheme="by_shard", seed=1)
    table = _table(tmp_path / "bs")
    per_shard = {s: {c for s2, c in zip(table.column("shard").to_pylist(), table.column("client").to_pylist(),
                                        strict=True) if s2 == s} for s in ("00000", "00001", "00002", "00003")}
    assert all(len(c) == 1 for c in per_shard.values())
    assert sorted(Counter(next(iter(c)) for c in per_shard.values()).values()) == [2, 2]


def test_same_seed_same_bytes_other_seed_other_assignment(tiny_shards: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_partition(tiny_shards, tmp_path / name, clients=4, scheme="dirichlet", params={"alpha": 0.5}, seed=3)
    assert (tmp_path / "a" / TABLE_FILE).read_bytes() == (tmp_path / "b" / TABLE_FILE).read_bytes()
    assert (tmp_path / "a" / RECORD_FILE).read_bytes() == (tmp_path / "b" / RECORD_FILE).read_bytes()
    make_partition(tiny_shards, tmp_path / "c", clients=4, scheme="dirichlet", params={"alpha": 0.5}, seed=4)
    assert not _table(tmp_path / "a").equals(_table(tmp_path / "c"))


def _reordered(rows: LiveRows, order: np.ndarray) -> LiveRows:
    labels = rows.labels[order] if rows.labels is not None else None
    return LiveRows(rows.shards, rows.keys[order], rows.shard_of[order], labels, rows.fingerprint)


@pytest.mark.parametrize(("scheme", "params"), SCHEME_PARAMS)
def test_assignment_does_not_depend_on_row_or_shard_order(tiny_shards: Path, scheme: str, params: dict) -> None:
    """Rows read shard by shard in reverse (or any) order get the same clients."""
    chosen = SCHEMES.create(scheme, params)
    rows = live_rows(tiny_shards, chosen.label_column)
    reverse_shards = np.concatenate([np.flatnonzero(rows.shard_of == s) for s in reversed(rows.shards)])
    shuffled = np.random.default_rng(0).permutation(len(rows))
    base = dict(zip(rows.keys, chosen.assign(rows, 3, 11), strict=True))
    for order in (reverse_shards, shuffled):
        moved = _reordered(rows, order)
        assert dict(zip(moved.keys, chosen.assign(moved, 3, 11), strict=True)) == base


def test_renamed_shards_keep_the_key_to_client_map(tiny_shards: Path, tmp_path: Path) -> None:
    """Shards listed in another order (renamed: 00000 <-> 00003) give iid the same key -> client map."""
    moved = tmp_path / "moved"
    moved.mkdir()
    names = {"00000": "00003", "00001": "00002", "00002": "00001", "00003": "00000"}
    for old, new in names.items():
        for suffix in (".tar", ".parquet"):
            shutil.copyfile(tiny_shards / f"{old}{suffix}", moved / f"{new}{suffix}")
    make_partition(tiny_shards, tmp_path / "a", clients=5, seed=2)
    make_partition(moved, tmp_path / "b", clients=5, seed=2)
    a, b = _table(tmp_path / "a"), _table(tmp_path / "b")
    assert dict(zip(a.column("key").to_pylist(), a.column("client").to_pylist(), strict=True)) == \
        dict(zip(b.column("key").to_pylist(), b.column("client").to_pylist(), strict=True))


def test_dirichlet_skews_labels_and_small_alpha_skews_more(tiny_shards: Path, tmp_path: Path) -> None:
    def label_spread(alpha: float) -> float:
        chosen = SCHEMES.create("dirichlet", {"alpha": alpha})
        rows = live_rows(tiny_shards, "label")
        assigned = chosen.assign(rows, 4, 0)
        shares = [np.bincount(assigned[rows.labels == lab], minlength=4) / (rows.labels == lab).sum()
                  for lab in set(rows.labels.tolist())]
        return float(np.mean([s.max() for s in shares]))

    assert label_spread(0.05) > label_spread(100.0)
    assert label_spread(100.0) < 0.6  # near iid: no client holds most of a class


def test_record_names_the_input_as_the_attack_planner_does(tiny_shards: Path, tmp_path: Path) -> None:
    record = make_partition(tiny_shards, tmp_path / "p", clients=2, scheme="dirichlet", params={"alpha": 1.0}, seed=5)
    raw = json.loads((tmp_path / "p" / RECORD_FILE).read_text())
    assert raw["fingerprint"] == index_dataset(tiny_shards).fingerprint == record.fingerprint
    assert raw["scheme"] == "dirichlet" and raw["params"] == {"alpha": 1.0, "label_column": "label"}
    assert raw["seed"] == 5 and raw["clients"] == 2 and sum(raw["counts"]) == raw["samples"] == 240
    assert load_record(tmp_path / "p") == record
    assert not list((tmp_path / "p").glob(".*.tmp"))  # atomic writes leave no temp files


def test_only_live_rows_are_partitioned(tiny_shards: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_shards, src)
    side = sidecar_path(src, "00001")
    table = pq.read_table(side)
    statuses = table.column("status").to_pylist()
    statuses[:5] = ["dropped"] * 5
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", pa.array(statuses)), side)
    record = make_partition(src, tmp_path / "p", clients=3, seed=0)
    assert record.samples == 235
    assert not set(table.column("key").to_pylist()[:5]) & set(_table(tmp_path / "p").column("key").to_pylist())


def test_dirichlet_without_labels_is_a_clear_error(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match="needs a class label per sample.*'colour_name'"):
        make_partition(tiny_shards, tmp_path / "p", clients=2, scheme="dirichlet",
                       params={"label_column": "colour_name"})
    assert not (tmp_path / "p" / RECORD_FILE).exists()


def test_impossible_partitions_fail_before_writing(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match="one shard per client"):
        make_partition(tiny_shards, tmp_path / "p", clients=5, scheme="by_shard")
    with pytest.raises(PartitionError, match="only 240 live samples"):
        make_partition(tiny_shards, tmp_path / "p", clients=241)
    with pytest.raises(PartitionError, match="must not be the shard folder"):
        make_partition(tiny_shards, tiny_shards, clients=2)
    with pytest.raises(PartitionError, match="client 9 is not in this partition"):
        make_partition(tiny_shards, tmp_path / "q", clients=2)
        client_keys(tmp_path / "q", 9)
    assert not (tmp_path / "p").exists()


def test_plain_tars_without_sidecars_take_labels_from_the_json_members(tiny_shards: Path, tmp_path: Path) -> None:
    """A foreign WebDataset folder (no sidecars) is read once with image probing off; the generated dataset's
    ``.json`` members carry its class, so dirichlet assigns exactly as from the sidecars."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for tar in tiny_shards.glob("*.tar"):
        shutil.copyfile(tar, plain / tar.name)
    make_partition(tiny_shards, tmp_path / "a", clients=3, scheme="dirichlet", params={"alpha": 0.5}, seed=2)
    record = make_partition(plain, tmp_path / "b", clients=3, scheme="dirichlet", params={"alpha": 0.5}, seed=2)
    assert _table(tmp_path / "a").equals(_table(tmp_path / "b"))
    assert record.fingerprint == index_dataset(plain).fingerprint != load_record(tmp_path / "a").fingerprint


def test_a_client_left_empty_by_dirichlet_is_reported(tiny_shards: Path, tmp_path: Path) -> None:
    from poisonlab.federated.client_data import client_shard_set

    for seed in range(20):  # alpha this small leaves some client without samples for most seeds
        record = make_partition(tiny_shards, tmp_path / "p", clients=12, scheme="dirichlet",
                                params={"alpha": 0.01}, seed=seed)
        if 0 in record.counts:
            break
    empty = record.counts.index(0)
    with pytest.raises(PartitionError, match=f"client {empty} has no samples"):
        client_shard_set(tiny_shards, tmp_path / "p", empty)
