"""The graph science check: a subgraph backdoor of graph-text contrastive pretraining is learned, found by
the rate-free default detector on the victim's graph embeddings, and gone after cleaning and retraining.

Runs the shipped ``recipes/graph_subgraph.yaml`` unchanged through the same experiment runner as the image
recipes (the ``graph_experiment`` session fixture): 6,000 generated motif graphs, an 8-node clique trigger
with descriptions naming ``house`` on 1% of them, ``graph_clip`` (GIN + open_clip text tower) trained on
the poisoned graphs (victim), on the clean ones (baseline) and on the cleaned ones, cleaning by the
``default`` detector (named in the recipe, chosen without the manifest) at a 5% budget.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.slow
def test_a_subgraph_backdoor_is_learned_found_by_the_default_and_removed(graph_experiment: dict[str, Any]) -> None:
    result = graph_experiment
    print("\n" + result["summary"])
    steps = result["steps"]
    assert steps["data"]["samples"] == 6000
    assert steps["poison"]["poisoned"] == 60  # 1% of 6,000
    models = {label: per_attack["subgraph_trigger"] for label, per_attack in steps["evaluate"].items()}
    victim, cleaned, baseline = models["victim"], models["cleaned"], models["baseline"]
    # the backdoor is learned while the task is (7 classes: chance is 0.14)
    assert victim["zero_shot"] >= 0.8
    assert victim["attack_success"] >= 0.8
    # a model trained without the poison does not send triggered graphs to the target
    assert baseline["attack_success"] <= 0.15
    # the same default configuration as for images, here on the graph space, with no per-attack setting
    detectors = steps["detect"]["detectors"]
    print({name: round(d["auroc"], 4) for name, d in detectors.items()})
    assert detectors["default"]["auroc"] >= 0.95
    clean = steps["clean"]
    assert clean["detector"] == "default" and not clean["oracle"]
    assert clean["removed"] == 300  # 5% of 6,000
    assert cleaned["attack_success"] <= 0.15
    assert abs(cleaned["zero_shot"] - victim["zero_shot"]) <= 0.05
    # the report has the image recipes' tables and plots
    report = result["root"] / "report"
    assert {"report.html", "report.md", "roc.png", "loss_curves.png", "attack_success.png"} <= {
        p.name for p in report.iterdir()}
