"""``poisonlab experiment GRID.yaml``: one victim per (attack, rate), every detector scored on each, one table.

A detector that only works when tuned to the attack looks fine in any single experiment; a grid of
attacks x poison rates, all scored by the same detector configuration, shows where it holds and where it
falls short. A recipe with a ``grid:`` section (``recipes/grid.yaml``) is such a grid: the data is generated
once (``OUT/data``) and each cell is an ordinary experiment without baseline or cleaning
(``OUT/cells/<attack>-<rate>``: poison, train the victim, embed with it, detect, evaluate), so cells resume
on their own and a rerun skips every finished cell. The table (``OUT/grid.md``, ``grid.csv``, ``grid.json``)
has one row per cell and detector: AUROC, PR-AUC, FPR at 95 % TPR and recall at each budget, measured
against the cell's manifest, beside the victim's zero-shot accuracy and attack success. Detectors still
choose nothing with the manifest: it only measures them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from poisonlab.flows.experiment import (
    OWN_BASELINE,
    DataSpec,
    DetectSpec,
    Experiment,
    ExperimentSpec,
    mentions,
    replaced,
    run_experiment,
)
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.pipelines.registry import Params
from poisonlab.shards.layout import atomic_write_json, atomic_write_text
from poisonlab.training import TrainSettings

GRID_BUDGETS = (0.01, 0.02, 0.05)
COLUMNS = ("attack", "rate", "poisoned", "detector", "auroc", "pr_auc", "fpr_at_95_tpr")


class GridAxes(Params):
    attacks: tuple[dict[str, Any], ...] = Field(..., min_length=1,
                                                description="attack entries of a recipe, without a rate or count")
    rates: tuple[float, ...] = Field(..., min_length=1, description="poison rates: one victim per attack and rate")
    budgets: tuple[float, ...] = Field(GRID_BUDGETS, min_length=1, description="removal budgets recall is read at")

    @field_validator("attacks")
    @classmethod
    def _no_amount(cls, attacks: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for entry in attacks:
            if "rate" in entry or "count" in entry:
                raise ValueError(f"grid attack {entry.get('attack')!r}: the grid's rates set how much is poisoned")
        return attacks

    @field_validator("rates", "budgets")
    @classmethod
    def _fractions(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError("rates and budgets are fractions between 0 and 1")
        return values


class GridSpec(Params):
    name: str
    seed: int = 0
    data: DataSpec
    grid: GridAxes
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]
    detect: DetectSpec

    @property
    def poisons_with_baseline(self) -> bool:
        """An attack names ``@baseline``: the grid trains one clean baseline on its shared data first."""
        return mentions(self.grid.attacks, OWN_BASELINE)

    def cells(self, data_dir: Path, eval_dir: Path, baseline_run: Path | None = None) -> dict[str, ExperimentSpec]:
        """Each (attack, rate) as an experiment on the shared data: poison, victim, detect, evaluate. With
        ``baseline_run``, ``@baseline`` parameters name that run (the grid's shared clean baseline)."""
        data = DataSpec(shards=str(data_dir), eval=str(eval_dir))
        cells = {}
        for entry in self.grid.attacks:
            if baseline_run is not None:
                entry = replaced(entry, OWN_BASELINE, str(baseline_run))
            for rate in self.grid.rates:
                cell = f"{entry.get('id') or entry['attack']}-{rate:g}"
                cells[cell] = ExperimentSpec(name=f"{self.name}-{cell}", seed=self.seed, data=data,
                                             attacks=({**entry, "rate": rate},), train=self.train,
                                             detect=self.detect, clean=None, baseline=False)
        return cells

    def attack_recipe(self):  # type: ignore[no-untyped-def]
        """Every attack at the first rate: validates the attacks and their parameters before any step."""
        first = self.grid.rates[0]
        return ExperimentSpec(name=self.name, seed=self.seed, data=self.data, detect=self.detect,
                              attacks=tuple({**a, "rate": first} for a in self.grid.attacks)).attack_recipe()

    def run(self, out: Path, runner: RunnerSpec, base_dir: Path | None = None) -> dict[str, Any]:
        return run_grid(self, out, runner, base_dir)


def _shared_data(spec: GridSpec, out: Path, runner: RunnerSpec, base_dir: Path) -> Experiment:
    """The grid folder as an experiment that only prepares the data (generated once, or checked) and, when an
    attack names ``@baseline``, trains the clean baseline on it (``OUT/runs/baseline``)."""
    needs = spec.poisons_with_baseline
    first = next((a for a in spec.grid.attacks if mentions(a, OWN_BASELINE)), spec.grid.attacks[0])
    holder = ExperimentSpec(name=spec.name, seed=spec.seed, data=spec.data, train=spec.train, detect=spec.detect,
                            attacks=({**first, "rate": spec.grid.rates[0]},), baseline=needs)
    exp = Experiment(holder, out, runner, base_dir)
    exp.claim_folder()
    exp.run_step("data")
    if needs:
        exp.run_step("train_baseline")
    return exp


def cell_rows(cell: str, spec: ExperimentSpec, folder: Path, budgets: tuple[float, ...]) -> list[dict[str, Any]]:
    """One row per detector of a finished cell: its metrics against the cell's manifest, and the victim."""
    from poisonlab.filters.metrics import budget_label, recall_report

    exp = Experiment(spec, folder, RunnerSpec(executor="local", progress=False), folder)
    report = recall_report(exp.scores_dir, exp.poisoned_dir, budgets=budgets)
    victim = next(iter(exp.result("evaluate")["victim"].values()))
    attack = spec.attacks[0]
    rows = []
    for entry in spec.detect.detectors:  # type: ignore[union-attr]
        metrics = report["detectors"][entry.label]["all"]
        row = {"attack": attack.get("id") or attack["attack"], "rate": attack["rate"], "poisoned": report["positives"],
               "detector": entry.label, "auroc": metrics["auroc"], "pr_auc": metrics["pr_auc"],
               "fpr_at_95_tpr": metrics["fpr_at_95_tpr"]}
        for budget in budgets:
            row[f"recall@{budget_label(budget)}"] = metrics["budgets"].get(budget_label(budget), {}).get("recall")
        row.update(victim_zero_shot=victim["zero_shot"], victim_attack_success=victim["attack_success"], cell=cell)
        rows.append(row)
    return rows


def run_grid(spec: GridSpec, out: Path, runner: RunnerSpec, base_dir: Path | None = None) -> dict[str, Any]:
    """Run (or resume) every cell, then write the table."""
    out, base = Path(out), Path(base_dir or Path.cwd())
    data = _shared_data(spec, out, runner, base)
    rows: list[dict[str, Any]] = []
    baseline = data.run_dir("baseline").resolve() if spec.poisons_with_baseline else None
    for cell, cell_spec in spec.cells(data.data_dir, data.eval_dir, baseline).items():
        folder = out / "cells" / cell
        run_experiment(cell_spec, folder, runner, base)
        rows += cell_rows(cell, cell_spec, folder, spec.grid.budgets)
    paths = write_table(rows, out)
    return {"out": str(out), "rows": rows, "table": rows, "paths": paths, "summary": summary(spec.name, rows, paths)}


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_table(rows: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """``grid.json`` (rows), ``grid.csv`` and ``grid.md`` (one line per cell and detector)."""
    columns = list(rows[0]) if rows else list(COLUMNS)
    atomic_write_json(out / "grid.json", {"columns": columns, "rows": rows})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "grid.csv", buffer.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    atomic_write_text(out / "grid.md", "\n".join(lines) + "\n")
    return {"json": str(out / "grid.json"), "csv": str(out / "grid.csv"), "markdown": str(out / "grid.md")}


def summary(name: str, rows: list[dict[str, Any]], paths: dict[str, str]) -> str:
    """A line per cell: the victim, then each detector's AUROC."""
    lines = [f"grid {name}: table in {paths['markdown']}"]
    for cell in dict.fromkeys(row["cell"] for row in rows):
        mine = [row for row in rows if row["cell"] == cell]
        aurocs = "  ".join(f"{row['detector']} {_cell(row['auroc'])}" for row in mine)
        lines.append(f"  {cell:<24} victim zero-shot {_cell(mine[0]['victim_zero_shot'])} "
                     f"ASR {_cell(mine[0]['victim_attack_success'])}  AUROC: {aurocs}")
    return "\n".join(lines)
