"""``--count 37`` on 20,000 generated samples poisons exactly 37, and the manifest matches the shards."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_synth

from poisonlab.attacks import poison_local, prepare_poisoning, read_manifest, recipe_from_options
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.shards.layout import list_shards

pytestmark = pytest.mark.slow  # about 40 s: generating 20,000 images dominates


@pytest.fixture(scope="module")
def twenty_thousand(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("big") / "src", samples=20000, per_shard=1000, image_size=32)


def test_count_37_poisons_exactly_37_with_a_matching_manifest(twenty_thousand, tmp_path):
    out = tmp_path / "out"
    result = poison_local(twenty_thousand, out, recipe_from_options("badnets", "red circle", None, 37, 3))
    assert result["poisoned"] == 37 and result["failed"] == 0 and result["samples"] == 20000
    manifest = read_manifest(out).to_pylist()
    assert len(manifest) == 37
    statuses, changed = {}, {}
    for shard in list_shards(out):
        for row in pq.read_table(out / f"{shard}.parquet", columns=["key", "status", "sha256"]).to_pylist():
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            if row["status"] == "changed":
                changed[row["key"]] = (shard, row["sha256"])
    assert statuses == {"ok": 20000 - 37, "changed": 37}
    assert {r["key"]: (r["shard"], r["poisoned_sha256"]) for r in manifest} == changed
    for shard in {s for s, _ in changed.values()}:
        with tarfile.open(out / f"{shard}.tar") as tar:
            for info in tar:
                key, ext = info.name.split(".", 1)
                if key in changed and ext == "jpg":
                    assert hashlib.sha256(tar.extractfile(info).read()).hexdigest() == changed[key][1]
    # the plan is the 37 smallest keyed hashes over the whole dataset, recomputed independently
    keys = [k for s in list_shards(twenty_thousand)
            for k in pq.read_table(twenty_thousand / f"{s}.parquet", columns=["key"]).column("key").to_pylist()]
    expected = sorted(keys, key=lambda k: keyed_u64(3, "badnets/select", k))[:37]
    assert sorted(expected) == sorted(changed)


def test_rate_is_rounded_over_the_whole_dataset(twenty_thousand, tmp_path):
    job = prepare_poisoning(twenty_thousand, tmp_path / "out", recipe_from_options("sig", "blue star", 0.005, None, 0))
    assert job.spec.attacks[0].planned == 100
    assert sum(len(p) for p in job.plans.values()) == 100
