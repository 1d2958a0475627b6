"""Issue 13: outputs that refuse to be mixed, and the recall options.

Embeddings, scores, exclusions and manifests record the fingerprint of the shard folder they describe
(``poisonlab.shards.fingerprint``, the one formula the planner and partitions use too). ``clean`` refuses
scores of another folder (here: scores of the clean source used on its poisoned copy, which has the same
keys, so the key check alone let it through), ``recall`` refuses a manifest of another dataset, ``--force``
combines them anyway, and outputs written before fingerprints were kept are accepted with a warning.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_synth, one_line_error

from poisonlab.attacks import manifest_path, poison_local
from poisonlab.attacks.index import index_dataset
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.federated.rows import live_rows
from poisonlab.filters.embed import EmbedConfig
from poisonlab.filters.metrics import BUDGETS, parse_budgets, recall_report
from poisonlab.filters.pipeline import embed_shards
from poisonlab.filters.scan import scan
from poisonlab.flows.cli import app
from poisonlab.models.zoo import ModelSpec
from poisonlab.shards.fingerprint import DatasetMismatchError, dataset_fingerprint, table_fingerprints

DETECTORS = {"kdist": {"k": 8}, "caption_frequency": {}}
# two attacks of one type, told apart by their recipe ids
RECIPE = {"seed": 4, "attacks": [
    {"id": "patch_red", "attack": "badnets", "target": "red circle", "count": 5},
    {"id": "patch_blue", "attack": "badnets", "target": "blue star", "count": 4, "params": {"pattern": "solid"}},
]}


def _scan(shards: Path, root: Path) -> Path:
    store = embed_shards(shards, root / "emb", EmbedConfig(ModelSpec("poisonlab-tiny-32"), batch_size=64))["store"]
    scan(Path(store), DETECTORS, root / "scores")
    return root / "scores"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A clean folder, its poisoned copy (same keys), scores of each, and another dataset's poisoned copy."""
    root = tmp_path_factory.mktemp("mixing")
    data = make_synth(root / "data", samples=120, per_shard=60)
    poisoned = root / "poisoned"
    poison_local(data, poisoned, parse_recipe(RECIPE))
    other = make_synth(root / "other", samples=120, per_shard=60, seed=9)
    other_poisoned = root / "other_poisoned"
    poison_local(other, other_poisoned, parse_recipe(RECIPE))
    return {"data": data, "poisoned": poisoned, "other_poisoned": other_poisoned,
            "data_scores": _scan(data, root / "of_data"), "poisoned_scores": _scan(poisoned, root / "of_poisoned")}


def test_every_output_records_the_fingerprint_of_the_folder_it_describes(world: dict[str, Path]) -> None:
    poisoned, data = world["poisoned"], world["data"]
    fp = dataset_fingerprint(poisoned)
    assert fp != dataset_fingerprint(data)  # a poisoned copy is another dataset, though its keys are the same
    assert index_dataset(data).fingerprint == live_rows(data).fingerprint == dataset_fingerprint(data)  # one formula
    assert table_fingerprints(manifest_path(poisoned)) == (fp,)
    assert json.loads((poisoned / "poison.json").read_text())["fingerprint"] == fp
    scan_info = json.loads((world["poisoned_scores"] / "scan.json").read_text())
    assert scan_info["dataset"] == {"folder": str(poisoned.absolute()), "fingerprint": fp}
    store = Path(scan_info["config"]["stores"]["model"]["path"])
    assert json.loads((store / "model.json").read_text())["dataset"]["fingerprint"] == fp


def test_clean_refuses_scores_of_another_folder_unless_forced(cli, world: dict[str, Path], tmp_path: Path) -> None:
    args = ["clean", str(world["poisoned"]), "--decision", "top_fraction:detector=kdist,fraction=0.05",
            "--executor", "local"]
    res = cli.invoke(app, [*args, "--scores", str(world["data_scores"]), "--out", str(tmp_path / "mixed")])
    one_line_error(res, str(world["data"].absolute()), str(world["poisoned"].absolute()), "--force")
    assert not (tmp_path / "mixed").exists() or not list((tmp_path / "mixed").iterdir())

    res = cli.invoke(app, [*args, "--scores", str(world["data_scores"]), "--out", str(tmp_path / "forced"), "--force"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "combined because of --force" in res.output

    res = cli.invoke(app, [*args, "--scores", str(world["poisoned_scores"]), "--out", str(tmp_path / "clean"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["excluded"] == 6 and report["warnings"] == []  # ceil(5% of 120)
    fp = dataset_fingerprint(world["poisoned"])
    assert report["dataset"]["fingerprint"] == fp
    assert table_fingerprints(tmp_path / "clean" / "_run" / "exclusions.parquet") == (fp,)


def test_recall_refuses_a_manifest_of_another_dataset_unless_forced(cli, world: dict[str, Path], tmp_path: Path) -> None:
    scores = str(world["poisoned_scores"])
    other = manifest_path(world["other_poisoned"])
    res = cli.invoke(app, ["recall", "--scores", scores, "--manifest", str(other), "--out", str(tmp_path / "r1")])
    one_line_error(res, str(world["poisoned"].absolute()), str(world["other_poisoned"].absolute()), "--force")
    with pytest.raises(DatasetMismatchError):  # the same check in the Python API; scores of the source too
        recall_report(world["data_scores"], world["poisoned"])

    res = cli.invoke(app, ["recall", "--scores", scores, "--manifest", str(other), "--out", str(tmp_path / "r2"),
                           "--force"])
    assert res.exit_code == 0, res.output
    assert "combined because of --force" in res.output


def test_recall_takes_the_poisoned_folder_budgets_and_a_log_roc(cli, world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "recall"
    res = cli.invoke(app, ["recall", "--scores", str(world["poisoned_scores"]), "--manifest", str(world["poisoned"]),
                           "--out", str(out), "--budgets", "0.02,0.1", "--roc-scale", "log", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["warnings"] == [] and report["budgets"] == ["2%", "10%"]
    assert report["attacks"] == {"patch_blue": 4, "patch_red": 5}  # sections per recipe id, not per type
    assert report["attack_types"] == {"patch_blue": "badnets", "patch_red": "badnets"}
    kdist = report["detectors"]["kdist"]
    assert set(kdist["per_attack"]) == {"patch_blue", "patch_red"}
    assert kdist["all"]["budgets"]["2%"]["removed"] == 3  # ceil(2% of 120)
    markdown = (out / "recall.md").read_text()
    assert "## patch_red (badnets)" in markdown and "R@2%" in markdown
    for name in ("roc.png", "roc_patch_red.png", "pr_patch_blue.png"):
        assert (out / name).stat().st_size > 0


def test_the_default_budgets_hold_the_cleaning_budget_and_bad_budgets_are_one_line_errors(cli, world, tmp_path) -> None:
    assert 0.02 in BUDGETS and parse_budgets("0.05, 0.001,0.05") == (0.001, 0.05)
    for bad, word in (("0.02,two", "'two'"), ("2", "(0, 1]"), ("0", "(0, 1]")):
        res = cli.invoke(app, ["recall", "--scores", str(world["poisoned_scores"]), "--manifest", str(world["poisoned"]),
                               "--out", str(tmp_path / "r"), "--budgets", bad])
        one_line_error(res, word)
    res = cli.invoke(app, ["recall", "--scores", str(world["poisoned_scores"]), "--manifest", str(tmp_path),
                           "--out", str(tmp_path / "r")])
    one_line_error(res, "manifest.parquet")


def test_outputs_without_a_fingerprint_are_accepted_with_a_warning(world: dict[str, Path], tmp_path: Path) -> None:
    old_scores = tmp_path / "old_scores"
    shutil.copytree(world["poisoned_scores"], old_scores)
    info = json.loads((old_scores / "scan.json").read_text())
    del info["dataset"]
    (old_scores / "scan.json").write_text(json.dumps(info))
    report = recall_report(old_scores, world["poisoned"])
    assert len(report["warnings"]) == 1 and "no dataset fingerprint" in report["warnings"][0]
    old_manifest = tmp_path / "manifest.parquet"
    pq.write_table(pq.read_table(manifest_path(world["poisoned"])).replace_schema_metadata(None), old_manifest)
    report = recall_report(world["poisoned_scores"], old_manifest)
    assert "no dataset fingerprint" in report["warnings"][0] and report["positives"] == 9


def test_a_scan_refuses_stores_of_two_datasets(world: dict[str, Path], tmp_path: Path) -> None:
    stores = {name: Path(json.loads((world[f"{name}_scores"] / "scan.json").read_text())
                         ["config"]["stores"]["model"]["path"]) for name in ("poisoned", "data")}
    with pytest.raises(DatasetMismatchError, match="describe different datasets"):
        scan({"model": stores["poisoned"], "reference": stores["data"]},
             {"clip_score": {"embeddings": "reference"}}, tmp_path / "scores")
