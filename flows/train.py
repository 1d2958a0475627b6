"""The training and evaluation steps of an experiment: one run per dataset variant, all with the same settings.

Runs resume from their last epoch checkpoint, so an interrupted experiment loses at most one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poisonlab.flows.experiment import Experiment
from poisonlab.shards.layout import atomic_write_json
from poisonlab.training import evaluate_run_attacks, headline, train_run

MODEL_LABELS = ("victim", "baseline", "cleaned")


def _train(exp: Experiment, label: str, shards: Path) -> dict[str, Any]:
    result = train_run(shards, exp.run_dir(label), exp.spec.train, resume=True, progress=exp.runner.progress)
    assert result is not None
    return {**result.to_dict(), "shards": str(shards)}


def train_victim(exp: Experiment) -> dict[str, Any]:
    """Train on the poisoned shards: the model the attacker hopes to backdoor."""
    return _train(exp, "victim", exp.poisoned_dir)


def train_baseline(exp: Experiment) -> dict[str, Any]:
    """Train on the same data before poisoning: how often a clean model maps triggered images to the target."""
    return _train(exp, "baseline", exp.data_dir)


def train_cleaned(exp: Experiment) -> dict[str, Any]:
    """Retrain on the cleaned shards with the victim's settings."""
    return _train(exp, "cleaned", exp.cleaned_dir)


def attack_ids(exp: Experiment) -> list[str]:
    return exp.spec.attack_recipe().ids()


def evaluate(exp: Experiment) -> dict[str, Any]:
    """Every trained model on the evaluation split, with each attack's exact trigger."""
    out: dict[str, Any] = {}
    for label in MODEL_LABELS:
        run = exp.run_dir(label)
        if not (run / "train_summary.json").exists():
            continue
        per_attack = {}
        results = evaluate_run_attacks(run, exp.eval_dir, exp.poisoned_dir, attack_ids(exp), exp.spec.train.device)
        for attack_id, result in results.items():
            path = exp.out / "eval" / f"{label}.{attack_id}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, json.loads(json.dumps(result, default=float)))
            per_attack[attack_id] = {**headline(result), "file": str(path),
                                     "retrieval_r1": (result.get("retrieval") or {}).get("image_to_text_r1")}
        out[label] = per_attack
    return out
