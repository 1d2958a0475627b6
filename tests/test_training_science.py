"""The science check: a backdoor is learned, found by a detector, and gone after cleaning and retraining.

Runs the shipped ``recipes/badnets.yaml`` unchanged (20,000 generated pairs, badnets at 0.5%) through the
experiment runner: victim, clean baseline, detection on the victim's embeddings, cleaning at a 2% budget
with the detector the recipe names (kdist at k = 400: chosen without the manifest, no oracle), retraining with
the same settings, evaluation of all three. About 35 minutes on 2 cores (three trainings of ~10 minutes).
Measured (10 epochs): victim zero-shot 0.968 and ASR 1.000, baseline 0.966 / 0.000, cleaned 0.969 / 0.000;
kdist_k400 AUROC 1.000 with all 100 poisoned pairs in the top 2%, dao_k400 0.996, default 0.992 (0.92).
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.slow
def test_badnets_is_learned_then_removed_by_cleaning(badnets_experiment: dict[str, Any]) -> None:
    """The session's run of ``recipes/badnets.yaml`` (the ``badnets_experiment`` fixture)."""
    result = badnets_experiment
    assert result["spec"].data.synth is not None and result["spec"].data.synth.samples >= 20_000
    print("\n" + result["summary"])
    steps = result["steps"]
    assert steps["poison"]["poisoned"] == 100  # 0.5% of 20,000
    models = {label: per_attack["badnets"] for label, per_attack in steps["evaluate"].items()}
    victim, cleaned, baseline = models["victim"], models["cleaned"], models["baseline"]
    # the backdoor is learned without hurting the task
    assert victim["zero_shot"] >= 0.8
    assert victim["attack_success"] >= 0.9
    # a model trained on the same data without poison is not fooled by the trigger
    assert baseline["attack_success"] <= 0.1
    # on the victim's own embeddings the neighbourhood sparsity of Huang et al. finds the poison once the
    # neighbourhood reaches past the 100 pairs that share the trigger, while the victim's image-caption
    # similarity is no detector: it fits its poisoned pairs at least as well as its clean ones
    detectors = steps["detect"]["detectors"]
    print({name: round(d["auroc"], 4) for name, d in detectors.items()})
    assert detectors["kdist_k400"]["auroc"] >= 0.98
    assert detectors["kdist_k400"]["recall_at_budget"] >= 0.95  # the top 2% by kdist hold >= 95% of the poison
    assert detectors["dao_k400"]["auroc"] >= 0.98
    assert detectors["clip_score"]["auroc"] <= 0.6
    # the rate-free default (no k, rate or trigger chosen for this attack) finds it too: measured 0.992 and
    # 0.92 on this victim (0.995 and 0.95 on the 6-epoch one: benchmarks/results/2026-12-03-default-detector.md)
    assert detectors["default"]["auroc"] >= 0.98
    assert detectors["default"]["recall_at_budget"] >= 0.9
    # cleaning at a 2% budget with the detector the recipe names removes it, and costs (almost) no accuracy
    clean = steps["clean"]
    assert clean["detector"] == "kdist_k400" and not clean["oracle"]
    assert clean["removed"] == 400
    assert cleaned["attack_success"] <= 0.05
    assert abs(cleaned["zero_shot"] - victim["zero_shot"]) <= 0.03
    assert (result["root"] / "report" / "report.html").exists()
