"""The science check: five backdoors planted in one victim, found by the default detector, gone after cleaning.

Runs the shipped ``recipes/multi_attack.yaml`` unchanged through the experiment runner (the
``science_experiment`` fixture): 20,000 generated pairs with badnets, blended, wanet, a dirty-label caption
trigger and a BadCLIP-style optimised patch at 0.5% each (100 pairs each, each with its own trigger and
target class; the patch optimised on the experiment's own clean baseline, trained first), a victim and the
baseline trained 10 epochs, detection on the victim's own embeddings, cleaning by the rate-free ``default``
detector at a 3% budget (chosen without the manifest: no oracle), retraining with the same settings,
evaluation of the three models on every attack. About 36 minutes on 2 cores (three trainings of ~10
minutes). One victim serves every check below; the numbers quoted are those measured here
(``benchmarks/results/2026-12-05-multi-attack-five.md``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

# What the 10-epoch victim of this recipe learns (blended and wanet: see below)
LEARNED = ("badnets", "text_trigger", "optimised_patch")


def _per_attack(result: dict[str, Any], detector: str) -> dict[str, dict[str, Any]]:
    """attack id -> that attack's metrics for ``detector`` (the other attacks' pairs left out of the ranking)."""
    report = json.loads((result["root"] / "detection" / "recall.json").read_text())
    return report["detectors"][detector]["per_attack"]


def _models(result: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """model -> attack id -> zero-shot and attack success."""
    return result["steps"]["evaluate"]


@pytest.mark.slow
def test_the_victim_learns_the_backdoors_and_the_task(science_experiment: dict[str, Any]) -> None:
    result = science_experiment
    assert result["spec"].data.synth is not None and result["spec"].data.synth.samples >= 20_000
    print("\n" + result["summary"])
    assert result["steps"]["poison"]["poisoned"] == 500  # 5 x 0.5% of 20,000
    victim, baseline = _models(result)["victim"], _models(result)["baseline"]
    # measured: zero-shot 0.955; ASR badnets 0.999, caption trigger 0.979, optimised patch 0.999
    assert victim["badnets"]["zero_shot"] >= 0.9
    assert victim["badnets"]["attack_success"] >= 0.9
    assert victim["text_trigger"]["attack_success"] >= 0.8
    assert victim["optimised_patch"]["attack_success"] >= 0.8  # issue 15's bar for the BadCLIP-style patch
    # Not learned by this victim, so their rows test a detector on an unlearned trigger: blended (noise at
    # alpha 0.2 is on the edge for this model: 0.003 here, 0.717 beside three other attacks, 0.261 in a 6-epoch
    # victim of its own) and the warp (s = 0.5 at 32 px: 0.001; s = 4 was not learned either, 0.012)
    print({attack: round(m["attack_success"], 3) for attack, m in victim.items()})
    # a model trained on the same data without poison is fooled by none of the triggers
    for attack, metrics in baseline.items():
        assert metrics["attack_success"] <= 0.1, (attack, metrics)


@pytest.mark.slow
def test_the_default_finds_every_learned_backdoor(science_experiment: dict[str, Any]) -> None:
    """Issue 15's bars, with no k, rate or trigger chosen for any of the attacks (per attack, at a 2% budget)."""
    default = _per_attack(science_experiment, "default")
    print({a: (round(m["auroc"], 3), m["budgets"]["2%"]["recall"], m["joint_recall"]) for a, m in default.items()})
    # measured: 0.999 / 1.00 (badnets), 0.995 / 0.92 (blended), 0.999 / 1.00 (caption trigger)
    for attack in ("badnets", "blended"):
        assert default[attack]["auroc"] >= 0.98, attack
        assert default[attack]["budgets"]["2%"]["recall"] >= 0.9, attack
    assert default["text_trigger"]["auroc"] >= 0.95
    # the open question of issue 15 (no floor there): does a patch optimised toward the target's text evade
    # density detectors? Measured here: no, 0.992 / 0.96. Held to what was measured, so a change that lets
    # it evade the default shows up.
    assert default["optimised_patch"]["auroc"] >= 0.95


@pytest.mark.slow
def test_what_each_ingredient_and_baseline_detector_sees(science_experiment: dict[str, Any]) -> None:
    """The image side finds the image triggers, the caption side the caption trigger, and the victim's own
    image-caption similarity is inverted on what it learned (it fits its poisoned pairs best)."""
    result = science_experiment
    subsets, phrases = _per_attack(result, "kdist_subsets"), _per_attack(result, "phrase_burst")
    tuned, clip = _per_attack(result, "kdist_k400"), _per_attack(result, "clip_score")
    # measured: kdist_subsets 1.000 / 0.991 / 1.000 on badnets / blended / the optimised patch, phrase_burst
    # 1.000 on the caption trigger
    assert subsets["badnets"]["auroc"] >= 0.98 and subsets["blended"]["auroc"] >= 0.98
    assert subsets["optimised_patch"]["auroc"] >= 0.98
    assert phrases["text_trigger"]["auroc"] >= 0.98
    # kdist tuned to 100 pairs sharing a trigger (k = 400, recipes/badnets.yaml): 1.000, all 100 in its top 2%
    assert tuned["badnets"]["auroc"] >= 0.98 and tuned["badnets"]["budgets"]["2%"]["recall"] >= 0.95
    for attack in LEARNED:  # measured 0.05-0.40
        assert clip[attack]["auroc"] <= 0.6, attack


@pytest.mark.slow
def test_cleaning_with_the_default_removes_the_backdoors(science_experiment: dict[str, Any]) -> None:
    result = science_experiment
    clean = result["steps"]["clean"]
    assert clean["detector"] == "default" and not clean["oracle"]
    assert clean["removed"] == 600  # 3% of 20,000
    victim, cleaned = _models(result)["victim"], _models(result)["cleaned"]
    print({attack: round(m["attack_success"], 3) for attack, m in cleaned.items()}, clean)
    for attack in LEARNED:
        assert cleaned[attack]["attack_success"] <= 0.1, (attack, cleaned[attack])
    assert abs(cleaned["badnets"]["zero_shot"] - victim["badnets"]["zero_shot"]) <= 0.03
    assert (result["root"] / "report" / "report.html").exists()
