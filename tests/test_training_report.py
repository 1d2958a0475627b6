"""The experiment report names every attack a model was evaluated on, not the first one only."""

from __future__ import annotations

from pathlib import Path

from poisonlab.flows.experiment_steps import attack_success_text
from poisonlab.training.report import ModelRow, write_report


def _row(label: str, success: dict[str, float | None]) -> ModelRow:
    return ModelRow(label=label, trained_on=label, zero_shot=0.9, attack_success=success, linear_probe=0.8,
                    retrieval_r1=None)


def test_a_victim_of_several_backdoors_shows_each_attack_success(tmp_path: Path) -> None:
    models = [_row("victim", {"badnets": 1.0, "blended": 0.717}), _row("cleaned", {"badnets": 0.577, "blended": 0.0})]
    paths = write_report(tmp_path, "two attacks", models, [], {}, None)
    text = Path(paths["markdown"]).read_text()
    assert "| model | trained on | zero-shot acc | attack success (badnets) | attack success (blended) |" in text
    assert "| victim | victim | 0.900 | 1.000 | 0.717 |" in text
    assert "| cleaned | cleaned | 0.900 | 0.577 | 0.000 |" in text
    assert attack_success_text(models[0]) == "badnets 1.000, blended 0.717"


def test_one_attack_keeps_the_single_column(tmp_path: Path) -> None:
    models = [_row("victim", {"badnets": 0.99}), _row("baseline", {"badnets": None})]
    text = Path(write_report(tmp_path, "one attack", models, [], {}, None)["markdown"]).read_text()
    assert "| model | trained on | zero-shot acc | attack success | linear probe |" in text
    assert "| baseline | baseline | 0.900 | n/a |" in text
    assert attack_success_text(models[0]) == "0.990" and attack_success_text(models[1]) == "n/a"
    assert models[0].first_success == 0.99
