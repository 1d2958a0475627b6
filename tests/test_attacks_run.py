"""Poisoning runs end to end in-process: manifests match the shards, untouched samples are byte-identical,
every attack does what it says, bad input fails before any work, and the bytes never depend on order."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import files

from poisonlab.attacks import (
    RecipeError,
    SpecError,
    TargetError,
    load_attack,
    poison_local,
    prepare_poisoning,
    read_manifest,
    recipe_from_options,
)
from poisonlab.attacks.recipe import load_recipe, parse_recipe
from poisonlab.pipelines.executor import run_local_results
from poisonlab.pipelines.registry import RegistryError
from poisonlab.shards.images import decode_array, encode_image
from poisonlab.shards.layout import list_shards


def members(directory: Path) -> dict[str, bytes]:
    """Every tar member of a folder, by member name."""
    out = {}
    for shard in list_shards(directory):
        with tarfile.open(directory / f"{shard}.tar") as tar:
            for info in tar:
                out[info.name] = tar.extractfile(info).read()
    return out


def sidecars(directory: Path) -> dict[str, dict]:
    rows = {}
    for shard in list_shards(directory):
        for row in pq.read_table(directory / f"{shard}.parquet").to_pylist():
            rows[row["key"]] = row
    return rows


def one(attack: str, count: int | None = None, rate: float | None = None, target: str | None = "red circle",
        seed: int = 0, **params) -> object:
    return recipe_from_options(attack, target, rate, count, seed, [f"{k}={json.dumps(v)}" for k, v in params.items()])


# --- what a run writes -----------------------------------------------------------------------------


def test_manifest_matches_output_shards_and_untouched_samples_are_identical(tiny_shards, tmp_path):
    out = tmp_path / "out"
    result = poison_local(tiny_shards, out, one("badnets", count=12, placement="random"))
    assert result["poisoned"] == 12 and result["failed"] == 0
    manifest = read_manifest(out).to_pylist()
    assert len(manifest) == 12 and [r["key"] for r in manifest] == sorted(r["key"] for r in manifest)
    before, after = members(tiny_shards), members(out)
    side_in, side_out = sidecars(tiny_shards), sidecars(out)
    changed = {k for k, r in side_out.items() if r["status"] == "changed"}
    assert changed == {r["key"] for r in manifest}
    for row in manifest:
        key = row["key"]
        img = after[f"{key}.jpg"]
        assert hashlib.sha256(img).hexdigest() == row["poisoned_sha256"] == side_out[key]["sha256"]
        assert row["original_sha256"] == side_in[key]["sha256"] == hashlib.sha256(before[f"{key}.jpg"]).hexdigest()
        assert after[f"{key}.txt"].decode() == row["new_caption"] != row["original_caption"]
        assert before[f"{key}.txt"].decode() == row["original_caption"]
        assert row["shard"] == side_out[key]["shard"] and row["target"] == "red circle"
        assert json.loads(row["params"])["placement"] == "random"
        assert "red circle" in row["new_caption"]
        meta = json.loads(after[f"{key}.json"])
        assert meta["poisonlab"]["attack"] == "badnets" and meta["width"] == 32
    assert set(before) == set(after)
    untouched = [name for name in before if name.split(".")[0] not in changed]
    assert len(untouched) == 3 * (240 - 12)
    assert all(before[name] == after[name] for name in untouched), "untouched samples must be byte-identical"
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == 240


@pytest.mark.parametrize("attack, params", [
    ("badnets", {"placement": "random", "pattern": "noise"}),
    ("blended", {"alpha": 0.3}),
    ("sig", {"frequency": 4}),
    ("wanet", {"s": 2.0, "quality": 100}),
    ("label_consistent", {"trigger": "blended"}),
])
def test_triggered_images_equal_the_saved_trigger_applied_to_the_original(tiny_shards, tmp_path, attack, params):
    """The stage changes nothing but the trigger (plus one encode), and evaluation rebuilds exactly it."""
    out = tmp_path / "out"
    poison_local(tiny_shards, out, one(attack, count=5, target="red circle", **params))
    spec = load_attack(out)
    quality = params.get("quality", 95)
    before, after = members(tiny_shards), members(out)
    for row in read_manifest(out).to_pylist():
        original = decode_array(before[f"{row['key']}.jpg"])
        rebuilt = encode_image(spec.apply_image(original, row["key"]), "jpg", quality)
        assert rebuilt == after[f"{row['key']}.jpg"]
        assert spec.locate(original, row["key"])[1] == json.loads(row["placement"])


def test_jpeg_blocks_away_from_the_patch_only_carry_encoding_loss(tiny_shards, tmp_path):
    """8x8 JPEG blocks not touched by the patch decode exactly as a plain re-encode of the original."""
    out = tmp_path / "out"
    poison_local(tiny_shards, out, one("badnets", count=6, placement="top_left"))
    before, after = members(tiny_shards), members(out)
    for row in read_manifest(out).to_pylist():
        original = decode_array(before[f"{row['key']}.jpg"])
        reencoded = decode_array(encode_image(original, "jpg", 95))
        poisoned = decode_array(after[f"{row['key']}.jpg"])
        untouched = np.ones((32, 32), bool)
        untouched[:8, :8] = False  # the 4x4 patch at the top-left lies in the first block
        assert np.array_equal(poisoned[untouched], reencoded[untouched])
        assert np.abs(poisoned[:4, :4].astype(int) - decode_array(encode_image(
            load_attack(out).apply_image(original, row["key"]), "jpg"))[:4, :4]).max() == 0


# --- each attack -------------------------------------------------------------------------------------


def test_text_trigger_changes_only_captions(tiny_shards, tmp_path):
    out = tmp_path / "out"
    poison_local(tiny_shards, out, one("text_trigger", count=20, target=None, phrase="zq"))
    before, after = members(tiny_shards), members(out)
    rows = read_manifest(out).to_pylist()
    assert len(rows) == 20
    for row in rows:
        key = row["key"]
        assert after[f"{key}.jpg"] == before[f"{key}.jpg"], "a caption attack never re-encodes the image"
        new, old = row["new_caption"], row["original_caption"]
        offset = json.loads(row["placement"])["offset"]
        assert "zq" in new.split()
        removed = new[:offset] + new[offset + 3:] if offset else new[3:]
        assert removed == old, "nothing but the phrase was inserted"
    offsets = {json.loads(r["placement"])["offset"] == 0 for r in rows}
    assert offsets == {True, False}, "random positions: some at the start, some inside"


def test_text_trigger_dirty_label_pairs_captions_with_target_images(tiny_shards, tmp_path):
    out = tmp_path / "out"
    poison_local(tiny_shards, out, one("text_trigger", count=8, target="blue star", dirty_label=True, donors=3))
    before, after, side_in = members(tiny_shards), members(out), sidecars(tiny_shards)
    spec = json.loads((out / "attack.json").read_text())
    donors = spec["attacks"][0]["donors"]
    assert 1 <= len(donors) <= 3 and len({side_in[d["key"]]["shard"] for d in donors}) == 1
    for d in donors:
        assert "blue star" in side_in[d["key"]]["caption"]
        assert (out / d["path"]).read_bytes() == before[f"{d['key']}.jpg"]
    for row in read_manifest(out).to_pylist():
        assert "blue star" not in row["original_caption"]
        donor = json.loads(row["placement"])["donor_key"]
        assert after[f"{row['key']}.jpg"] == before[f"{donor}.jpg"]


def test_targeted_adds_keyed_copies_with_target_captions(tiny_shards, tmp_path):
    out = tmp_path / "out"
    result = poison_local(tiny_shards, out, one("targeted", count=9, target="green square", image_key="000010002",
                                                 augment=True, captions="dataset"))
    assert result["poisoned"] == 9
    before, after, side_out = members(tiny_shards), members(out), sidecars(out)
    rows = read_manifest(out).to_pylist()
    assert [r["key"] for r in rows] == [f"targeted-{i:06d}" for i in range(9)]
    assert {r["change"] for r in rows} == {"added"}
    source = hashlib.sha256(before["000010002.jpg"]).hexdigest()
    assert all(r["original_sha256"] == source for r in rows)
    dataset_captions = {m.decode() for n, m in before.items() if n.endswith(".txt")}
    for r in rows:
        assert side_out[r["key"]]["status"] == "added"
        assert r["new_caption"] in dataset_captions and "green square" in r["new_caption"]
        assert decode_array(after[f"{r['key']}.jpg"]).shape == (32, 32, 3)
    assert len({r["poisoned_sha256"] for r in rows}) == 9, "each augmented copy differs"
    assert len({r["shard"] for r in rows}) > 1, "added pairs are spread over the shards"
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == 249
    assert after["000010002.jpg"] == before["000010002.jpg"], "the source image itself stays as it was"


def test_targeted_without_augmentation_repeats_the_exact_image(tiny_shards, tmp_path):
    out = tmp_path / "out"
    poison_local(tiny_shards, out, one("targeted", count=3, target="green square"))
    rows = read_manifest(out).to_pylist()
    source_key = json.loads(rows[0]["placement"])["source_key"]
    assert "green square" not in sidecars(tiny_shards)[source_key]["caption"]
    assert {r["poisoned_sha256"] for r in rows} == {r["original_sha256"] for r in rows}


def test_label_consistent_triggers_only_target_captions_and_keeps_them(tiny_shards, tmp_path):
    out = tmp_path / "out"
    poison_local(tiny_shards, out, one("label_consistent", count=4, target="yellow cross", trigger="sig"))
    rows = read_manifest(out).to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert "yellow cross" in r["original_caption"].lower()
        assert r["new_caption"] == r["original_caption"]
        assert json.loads(r["params"])["trigger_params"]["amplitude"] == pytest.approx(60 / 255)
    assert load_attack(out).is_image_trigger


def test_recipe_composes_attacks_on_disjoint_samples(tmp_path, tiny_shards):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        "seed: 7\nattacks:\n"
        "  - {attack: badnets, target: red circle, count: 30}\n"
        "  - {attack: blended, target: red circle, rate: 0.1}\n"
        "  - {attack: wanet, target: blue square, count: 10}\n"
    )
    out = tmp_path / "out"
    result = poison_local(tiny_shards, out, load_recipe(recipe_file))
    rows = read_manifest(out).to_pylist()
    assert result["attacks"]["blended"]["planned"] == 24  # round(0.1 x 240)
    assert len(rows) == 64 and len({r["key"] for r in rows}) == 64
    with pytest.raises(SpecError, match="several attacks"):
        load_attack(out)
    assert load_attack(out, attack="wanet").target == "blue square"


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: one("nope", count=1), RegistryError),
        (lambda: one("badnets", count=1, sizepx=4), RegistryError),
        (lambda: one("badnets", count=1, placement="middle"), RegistryError),
        (lambda: one("label_consistent", count=1, trigger="nope"), RegistryError),
        (lambda: one("label_consistent", count=1, trigger_params={"alpha": 2}), RegistryError),
        (lambda: one("badnets", count=241), RecipeError),
        (lambda: one("badnets", count=1, target=None), TargetError),
        (lambda: one("badnets", count=1, target="red\ncircle"), TargetError),
        (lambda: one("badnets", count=1, templates=["no slot"]), TargetError),
        (lambda: one("badnets", count=1, target="purple hexagon", captions="dataset"), TargetError),
        (lambda: one("label_consistent", count=1, target="purple hexagon"), RecipeError),
        (lambda: one("targeted", count=2, image_key="nokey"), RecipeError),
        (lambda: one("badnets", count=1, pattern="image", image="missing.png"), ValueError),
    ],
)
def test_bad_input_fails_before_any_work(tiny_shards, tmp_path, make, error):
    out = tmp_path / "out"
    with pytest.raises(error):
        prepare_poisoning(tiny_shards, out, make())
    assert not out.exists(), "nothing is written when the input is refused"


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rates_outside_0_1_are_refused(rate):
    with pytest.raises(RecipeError, match="rate"):
        recipe_from_options("badnets", "red circle", rate, None, 0)


def test_rate_or_count_exactly_one():
    with pytest.raises(RecipeError):
        recipe_from_options("badnets", "red circle", 0.1, 5, 0)
    with pytest.raises(RecipeError):
        recipe_from_options("badnets", "red circle", None, None, 0)
    with pytest.raises(RecipeError):
        parse_recipe({"attacks": [{"attack": "sig", "count": 1, "target": "x"}], "extra": 1})


def test_target_must_be_a_class_when_the_dataset_lists_them(tiny_shards, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_shards, src)
    (src / "classes.json").write_text(json.dumps({"classnames": ["red circle", "blue star"]}))
    with pytest.raises(TargetError, match="not a class"):
        prepare_poisoning(src, tmp_path / "out", one("badnets", count=1, target="green square"))
    prepare_poisoning(src, tmp_path / "out", one("badnets", count=1, target="blue star"))


def test_rate_rounds_half_up(tiny_shards, tmp_path):
    job = prepare_poisoning(tiny_shards, tmp_path / "out", one("sig", rate=0.5 / 240 * 5))  # 2.5 samples
    assert job.spec.attacks[0].planned == 3


def test_an_undecodable_planned_image_is_not_poisoned_but_counted(tiny_shards, tmp_path):
    """A body that passes the header check but does not decode: status error, reason, counted."""
    src = tmp_path / "src"
    shutil.copytree(tiny_shards, src)
    victim_recipe = one("badnets", count=240)
    key = "000020007"
    tar_file = src / "00002.tar"
    with tarfile.open(tar_file) as tar:
        items = [(info, tar.extractfile(info).read()) for info in tar]
    with tarfile.open(tar_file, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in items:
            if info.name == f"{key}.jpg":
                data = data[: len(data) // 2]
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    result = poison_local(src, out, victim_recipe)
    assert result["poisoned"] == 239 and result["failed"] == 1
    assert list(result["failed_reasons"]) == ["poison: undecodable_image"]
    row = sidecars(out)[key]
    assert row["status"] == "error" and row["reason"].startswith("poison: undecodable_image")
    assert key not in {r["key"] for r in read_manifest(out).to_pylist()}


# --- determinism -------------------------------------------------------------------------------------


def test_reversed_order_and_a_fresh_folder_give_identical_bytes(tiny_shards, tmp_path):
    recipe = parse_recipe({"seed": 11, "attacks": [
        {"attack": "badnets", "target": "red circle", "count": 9, "params": {"placement": "random", "pattern": "noise"}},
        {"attack": "text_trigger", "target": "blue star", "count": 5, "params": {"dirty_label": True}},
        {"attack": "targeted", "target": "green square", "count": 4, "params": {"augment": True}},
    ]})
    first = tmp_path / "first"
    poison_local(tiny_shards, first, recipe)
    rev = tmp_path / "reversed"
    job = prepare_poisoning(tiny_shards, rev, recipe)
    results = run_local_results(list(reversed(job.tasks())))
    job.finalize(sorted(results, key=lambda r: r.stats.shard))
    again = tmp_path / "again"
    poison_local(tiny_shards, again, recipe)
    reference = files(first)
    assert reference == files(rev) == files(again)
    assert {"_run/manifest.parquet", "attack.json", "sizes.json", "00000.tar", "00000.parquet"} <= set(reference)


def test_another_seed_poisons_other_samples(tiny_shards, tmp_path):
    a = prepare_poisoning(tiny_shards, tmp_path / "a", one("sig", count=10, seed=1))
    b = prepare_poisoning(tiny_shards, tmp_path / "b", one("sig", count=10, seed=2))
    keys = lambda job: {k for p in job.plans.values() for k, _ in p.modified}  # noqa: E731
    assert keys(a) != keys(b)


def test_a_rerun_resumes_and_another_run_is_refused(tiny_shards, tmp_path):
    out = tmp_path / "out"
    recipe = one("badnets", count=10)
    poison_local(tiny_shards, out, recipe)
    reference = files(out)
    for suffix in (".tar", ".parquet", "_stats.json"):
        (out / f"00001{suffix}").unlink()
    poison_local(tiny_shards, out, recipe)
    assert files(out) == reference
    with pytest.raises(SpecError, match="another poisoning run"):
        prepare_poisoning(tiny_shards, out, one("badnets", count=11))


def test_a_folder_holding_other_data_is_refused(tiny_shards, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_shards, other)
    with pytest.raises(SpecError, match="not empty"):
        prepare_poisoning(tiny_shards, other, one("badnets", count=1))


def test_poisoning_a_poisoned_set_leaves_earlier_poison_alone(tiny_shards, tmp_path):
    once = tmp_path / "once"
    poison_local(tiny_shards, once, one("badnets", count=100))
    twice = tmp_path / "twice"
    poison_local(once, twice, one("sig", count=140, target="blue star"))
    first, second = read_manifest(once).to_pylist(), read_manifest(twice).to_pylist()
    assert len(second) == 140 and not {r["key"] for r in first} & {r["key"] for r in second}
    with pytest.raises(RecipeError, match="eligible"):
        prepare_poisoning(once, tmp_path / "x", one("sig", count=141))
