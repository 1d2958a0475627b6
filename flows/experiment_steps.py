"""The data, poisoning, detection, cleaning and report steps of an experiment (training lives in flows/train.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from poisonlab.attacks.manifest import manifest_path
from poisonlab.flows.datasets import GENERATORS, SynthRequest
from poisonlab.flows.experiment import ORACLE_DETECTOR, Experiment, ExperimentError
from poisonlab.training.data import DataError, open_shard_set
from poisonlab.training.eval_data import EvalError, read_classes
from poisonlab.training.report import DetectorRow, ModelRow, write_report


def prepare_data(exp: Experiment) -> dict[str, Any]:
    """Generate the built-in dataset and its eval split, or check the given folders before any training."""
    synth = exp.spec.data.synth
    if synth is not None:
        request = SynthRequest(out=exp.data_dir, samples=synth.samples, seed=exp.spec.seed,
                               samples_per_shard=synth.samples_per_shard, eval_per_class=synth.eval_per_class,
                               image_size=synth.image_size)
        result = GENERATORS[synth.modality](request, exp.runner, False)
    else:
        result = {"out": str(exp.data_dir)}
    try:
        shard_set = open_shard_set(exp.data_dir)
        classnames, _, _ = read_classes(exp.eval_dir)
    except (DataError, EvalError) as exc:
        raise ExperimentError(str(exc)) from None
    return {**result, "samples": shard_set.samples, "shards": len(shard_set.shards), "eval": str(exp.eval_dir),
            "classes": len(classnames)}


def poison(exp: Experiment) -> dict[str, Any]:
    """Poison the clean shards with the recipe's attacks (manifest and attack.json beside the shards)."""
    from poisonlab.flows.poison import poison_dataset

    recipe = exp.spec.attack_recipe(exp.run_dir("baseline").resolve() if exp.spec.poisons_with_baseline else None)
    return poison_dataset(exp.data_dir, exp.poisoned_dir, recipe, exp.runner, exp.base_dir)


def _model_rows(exp: Experiment) -> list[ModelRow]:
    evaluation = exp.result("evaluate")
    trained_on = {"victim": "poisoned", "baseline": "clean (no poison)", "cleaned": "poisoned, then cleaned"}
    rows = []
    for label, per_attack in evaluation.items():
        if label == "resumed" or not per_attack:
            continue
        first = next(iter(per_attack.values()))
        success = {attack: result["attack_success"] for attack, result in per_attack.items()}
        rows.append(ModelRow(label=label, trained_on=trained_on.get(label, label), zero_shot=first["zero_shot"],
                             attack_success=success, linear_probe=first["linear_probe"],
                             retrieval_r1=first.get("retrieval_r1"),
                             loss_csv=exp.run_dir(label) / "metrics_steps.csv"))
    return rows


def _detector_rows(exp: Experiment) -> list[DetectorRow]:
    if exp.spec.detect is None:
        return []
    detection = exp.result("detect")
    chosen = exp.result("clean")["detector"] if exp.spec.clean is not None else None
    rows = []
    for label, m in detection["detectors"].items():
        rows.append(DetectorRow(name=label, auroc=m["auroc"], recall_at_budget=m["recall_at_budget"],
                                precision_at_budget=m["precision_at_budget"], removed=m["removed_at_budget"],
                                fpr=m.get("roc_fpr", ()), tpr=m.get("roc_tpr", ()), chosen=label == chosen))
    return rows


def report(exp: Experiment) -> dict[str, Any]:
    """Markdown + HTML report with the model and detector tables and the plots."""
    models = _model_rows(exp)
    detectors = _detector_rows(exp)
    poisoned = exp.result("poison")
    facts: dict[str, Any] = {
        "recipe": exp.spec.name, "seed": exp.spec.seed, "pairs": exp.result("data")["samples"],
        "attacks": ", ".join(f"{a['attack']} -> {a['target']!r} ({a['done']} pairs)" for a in poisoned["attacks"].values()),
        "model": exp.spec.train.model, "objective": exp.spec.train.objective,
        "training": f"{exp.spec.train.epochs} epochs, batch {exp.spec.train.batch_size}, lr {exp.spec.train.lr}",
    }
    budget = exp.spec.clean.budget if exp.spec.clean is not None else None
    if exp.spec.clean is not None:
        clean = exp.result("clean")
        chosen = "oracle: chosen against the ground truth" if clean.get("oracle") else "named in the recipe"
        facts["cleaning"] = (f"{clean['detector']} ({chosen}) at a {budget:.1%} budget: removed {clean['removed']} pairs, "
                             f"{clean['poisoned_removed']} of {clean['poisoned_total']} poisoned")
    paths = write_report(exp.report_dir, f"poisonlab experiment: {exp.spec.name}", models, detectors, facts, budget)
    table = [{"model": m.label, "zero_shot": m.zero_shot, "attack_success": m.first_success,
              "attack_success_by_attack": dict(m.attack_success), "linear_probe": m.linear_probe} for m in models]
    lines = [f"experiment {exp.spec.name}: report in {paths['markdown']} and {paths['html']}"]
    lines += [f"  {m.label:<9} zero-shot {m.zero_shot:.3f}  attack success {attack_success_text(m)}" for m in models]
    lines += [f"  detector {d.name:<14} AUROC {d.auroc:.3f}  recall@budget {d.recall_at_budget:.3f}"
              + ("  (used)" if d.chosen else "") for d in detectors]
    return {"paths": paths, "table": table, "summary": "\n".join(lines),
            "detectors": [{"name": d.name, "auroc": d.auroc, "recall_at_budget": d.recall_at_budget} for d in detectors]}


def attack_success_text(model: ModelRow) -> str:
    """``0.990`` for one attack; ``badnets 1.000, blended 0.717`` for several."""
    cells = {a: f"{v:.3f}" if v is not None else "n/a" for a, v in model.attack_success.items()}
    if len(cells) <= 1:
        return next(iter(cells.values()), "n/a")
    return ", ".join(f"{a} {v}" for a, v in cells.items())


def _shard_runner(exp: Experiment, label: str):  # type: ignore[no-untyped-def]
    from poisonlab.flows.runtime import job_runner

    return job_runner(exp.runner, label)


def embed(exp: Experiment) -> dict[str, Any]:
    """Embed the poisoned shards with the victim itself (with the embedder its run records: a graph run's
    for graphs): the defender's view of its own training data."""
    from poisonlab.filters.embed import EmbedConfig
    from poisonlab.filters.embedders import embedder_for
    from poisonlab.filters.pipeline import embed_shards
    from poisonlab.models.zoo import ModelSpec

    train, victim = exp.spec.train, exp.run_dir("victim")
    config = EmbedConfig(model=ModelSpec.from_run(victim), batch_size=exp.spec.detect.embed_batch_size,  # type: ignore[union-attr]
                         device=None if train.device == "auto" else train.device, embedder=embedder_for(victim))
    return embed_shards(exp.poisoned_dir, exp.embeddings_dir, config, run=_shard_runner(exp, "embed"))


def _manifest_keys(exp: Experiment) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(manifest_path(exp.poisoned_dir), columns=["key"]).column("key").to_pylist())


def _roc_points(scores: np.ndarray, labels: np.ndarray, limit: int = 400) -> tuple[list[float], list[float]]:
    from sklearn.metrics import roc_curve

    finite = np.where(np.isfinite(scores), scores, np.nanmin(scores[np.isfinite(scores)]) - 1 if np.isfinite(scores).any() else 0)
    fpr, tpr, _ = roc_curve(labels, finite)
    if len(fpr) > limit:
        pick = np.unique(np.linspace(0, len(fpr) - 1, limit).round().astype(int))
        fpr, tpr = fpr[pick], tpr[pick]
    return [round(float(x), 5) for x in fpr], [round(float(x), 5) for x in tpr]


def detect(exp: Experiment) -> dict[str, Any]:
    """Score every pair with every detector (one global neighbour search), then measure them on the manifest."""
    from poisonlab.filters.metrics import BUDGETS, budget_label, recall_report
    from poisonlab.filters.scan import scan
    from poisonlab.filters.scores import load_scores

    detectors = {d.label: {"detector": d.name, **d.params} for d in exp.spec.detect.detectors}  # type: ignore[union-attr]
    scanned = scan(Path(exp.result("embed")["store"]), detectors, exp.scores_dir)
    budget = exp.spec.clean.budget if exp.spec.clean is not None else 0.02
    # the usual budgets beside the cleaning one: a recipe that cleans at 3% still reports recall at 2%
    report = recall_report(exp.scores_dir, exp.poisoned_dir, out=exp.out / "detection",
                           budgets=tuple(sorted({*BUDGETS, budget})))
    table = load_scores(exp.scores_dir)
    live = np.flatnonzero(table.live)
    poisoned = _manifest_keys(exp)
    labels = np.array([table.keys[i] in poisoned for i in live])
    out: dict[str, Any] = {"positives": report["positives"], "samples": report["samples"], "budget": budget,
                           "seconds": scanned.get("seconds", {}), "detectors": {}}
    for label in detectors:
        metrics = report["detectors"][label]["all"]
        at_budget = metrics["budgets"].get(budget_label(budget), {})
        fpr, tpr = _roc_points(table.column(label)[live], labels) if 0 < labels.sum() < len(labels) else ([], [])
        out["detectors"][label] = {
            "auroc": metrics["auroc"], "pr_auc": metrics["pr_auc"], "recall_at_budget": at_budget.get("recall"),
            "precision_at_budget": at_budget.get("precision"), "removed_at_budget": at_budget.get("removed"),
            "roc_fpr": fpr, "roc_tpr": tpr,
        }
    return out


def best_detector(detection: dict[str, Any]) -> str:
    """The detector with the highest AUROC against the manifest (ties: the first listed)."""
    scored = {k: v["auroc"] for k, v in detection["detectors"].items() if v["auroc"] is not None}
    if not scored:
        raise ExperimentError("no detector could be scored against the manifest (no poisoned pairs?)")
    return max(scored, key=lambda k: scored[k])


def clean_detector(exp: Experiment) -> str:
    """The recipe's cleaning detector: the one it names, its first, or (``best``) the oracle's choice."""
    spec, detect = exp.spec.clean, exp.spec.detect
    assert spec is not None and detect is not None
    if spec.detector == ORACLE_DETECTOR:
        return best_detector(exp.result("detect"))
    return spec.detector or detect.detectors[0].label


def clean(exp: Experiment) -> dict[str, Any]:
    """Remove the top-scoring share of pairs (the budget) by the chosen detector; keep the rest byte-identical."""
    import pyarrow.parquet as pq

    from poisonlab.filters.pipeline import clean_shards

    spec = exp.spec.clean
    assert spec is not None
    detector = clean_detector(exp)
    report = clean_shards(exp.poisoned_dir, exp.scores_dir, {"name": "top_fraction", "detector": detector,
                                                              "fraction": spec.budget},
                          exp.cleaned_dir, run=_shard_runner(exp, "clean"))
    excluded = set(pq.read_table(report["exclusions"], columns=["key"]).column("key").to_pylist())
    poisoned = _manifest_keys(exp)
    return {"detector": detector, "oracle": spec.detector == ORACLE_DETECTOR, "budget": spec.budget,
            "removed": report["excluded"],
            "poisoned_removed": len(excluded & poisoned), "poisoned_total": len(poisoned),
            "exclusions": report["exclusions"], "out": report["out"]}
