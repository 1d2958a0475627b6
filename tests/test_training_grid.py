"""The detection grid: one victim per (attack, rate) on data generated once, every detector in one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from poisonlab.flows.experiment import ExperimentError, load_experiment
from poisonlab.flows.grid import GridSpec
from poisonlab.flows.runtime import RunnerSpec

GRID = {
    "name": "tinygrid",
    "seed": 2,
    "data": {"synth": {"samples": 240, "samples_per_shard": 120, "eval_per_class": 2}},
    "grid": {"attacks": [{"attack": "badnets", "target": "red circle"}, {"attack": "text_trigger", "target": "red circle"}],
             "rates": [0.05, 0.1], "budgets": [0.02, 0.1]},
    "train": {"epochs": 1, "batch_size": 48, "lr": 5e-4, "shuffle_buffer": 100, "workers": 0},
    "detect": {"detectors": [{"name": "kdist", "id": "kdist_k8", "params": {"k": 8}},
                             {"name": "kdist", "id": "batch_local", "params": {"k": 8, "mode": "batch_local",
                                                                               "batch_size": 60}}]},
}
LOCAL = RunnerSpec(executor="local", progress=False)


def _recipe(directory: Path, body: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "grid.yaml").write_text(yaml.safe_dump(body))
    return directory / "grid.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("grid")
    spec, base = load_experiment(_recipe(root, GRID))
    assert isinstance(spec, GridSpec)
    return root / "out", spec.run(root / "out", LOCAL, base)


def test_each_attack_and_rate_is_a_cell_on_the_same_data(finished: tuple[Path, dict]) -> None:
    out, result = finished
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["badnets-0.05", "badnets-0.1", "text_trigger-0.05", "text_trigger-0.1"]
    assert (out / "data" / "eval" / "classes.json").exists()
    for cell in cells:  # no cell generates data of its own, and none trains a baseline or cleans
        assert not (out / "cells" / cell / "data").exists()
        assert sorted(p.name for p in (out / "cells" / cell / "runs").iterdir()) == ["victim"]
        poison = json.loads((out / "cells" / cell / "steps" / "poison.json").read_text())
        assert poison["poisoned"] == round(240 * float(cell.rsplit("-", 1)[1]))


def test_the_table_has_every_metric_per_cell_and_detector(finished: tuple[Path, dict]) -> None:
    out, result = finished
    rows = result["rows"]
    assert len(rows) == 4 * 2
    assert {(r["attack"], r["rate"], r["detector"]) for r in rows} == {
        (a, rate, d) for a in ("badnets", "text_trigger") for rate in (0.05, 0.1) for d in ("kdist_k8", "batch_local")}
    for row in rows:
        assert row["poisoned"] == round(240 * row["rate"])
        for metric in ("auroc", "pr_auc", "fpr_at_95_tpr", "recall@2%", "recall@10%"):
            assert 0 <= row[metric] <= 1, (metric, row)
        assert 0 <= row["victim_zero_shot"] <= 1 and 0 <= row["victim_attack_success"] <= 1
    with (out / "grid.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    md = (out / "grid.md").read_text().splitlines()
    assert md[0].startswith("| attack | rate |") and len(md) == 2 + len(rows)
    assert json.loads((out / "grid.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert all(cell in result["summary"] for cell in ("badnets-0.05", "text_trigger-0.1"))


def test_a_rerun_resumes_every_cell_and_gives_the_same_table(finished: tuple[Path, dict]) -> None:
    out, result = finished
    victim = out / "cells" / "badnets-0.05" / "runs" / "victim" / "model.safetensors"
    before = victim.stat().st_mtime_ns
    spec, base = load_experiment(out.parent / "grid.yaml")
    again = spec.run(out, LOCAL, base)
    assert victim.stat().st_mtime_ns == before
    assert again["rows"] == result["rows"]


def test_a_grid_attack_with_its_own_amount_is_refused(tmp_path: Path) -> None:
    body = json.loads(json.dumps(GRID))
    body["grid"]["attacks"][0]["rate"] = 0.01
    with pytest.raises(ExperimentError, match="the grid's rates set how much is poisoned"):
        load_experiment(_recipe(tmp_path, body))
    body = json.loads(json.dumps(GRID))
    body["grid"]["attacks"][0]["params"] = {"no_such_parameter": 1}
    with pytest.raises(ExperimentError, match="no_such_parameter"):
        load_experiment(_recipe(tmp_path, body))


def test_a_grid_optimises_its_patch_on_one_shared_clean_baseline(tmp_path: Path) -> None:
    """``surrogate: "@baseline"`` in a grid: one clean baseline is trained on the shared data, and every cell's
    patch is optimised on it (no second experiment to run first)."""
    body = {**GRID, "name": "tinygrid-own",
            "grid": {"attacks": [{"attack": "optimised_patch", "target": "red circle",
                                  "params": {"surrogate": "@baseline", "steps": 4, "images": 16}}],
                     "rates": [0.05], "budgets": [0.1]},
            "detect": {"detectors": [{"name": "kdist", "id": "kdist_k8", "params": {"k": 8}}]}}
    spec, base = load_experiment(_recipe(tmp_path, body))
    result = spec.run(tmp_path / "out", LOCAL, base)
    baseline = (tmp_path / "out" / "runs" / "baseline").resolve()
    assert (baseline / "model.safetensors").exists()
    cell = tmp_path / "out" / "cells" / "optimised_patch-0.05"
    assert str(baseline) in (cell / "poisoned" / "attack.json").read_text()
    assert sorted(p.name for p in (cell / "runs").iterdir()) == ["victim"]
    assert [r["cell"] for r in result["rows"]] == ["optimised_patch-0.05"]
