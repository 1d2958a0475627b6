"""Evaluate a trained run: zero-shot accuracy, attack success, linear probe and retrieval on one split.

    result = evaluate_run("runs/victim", "data/eval", attack_from="poisoned/")
    print(format_evaluation(result))
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poisonlab.models.zoo import CheckpointError, ModelSpec, load_model, run_component
from poisonlab.pipelines.registry import get_registry
from poisonlab.shards.fingerprint import DatasetMismatchError
from poisonlab.training.attack_eval import (
    AttackUnderTest,
    image_asr,
    load_attack_under_test,
    targeted_success,
    text_asr,
    triggered_images,
)
from poisonlab.training.eval_data import EvalError, EvalSplit, load_eval_split
from poisonlab.training.features import image_features, predict, text_features, zero_shot_weights
from poisonlab.training.image_codec import ImageFormat
from poisonlab.training.lineage import check_attack_of_run
from poisonlab.training.precision import pick_device
from poisonlab.training.probe import linear_probe_accuracy
from poisonlab.training.retrieval import recall_at_k

# Evaluators of runs an adapter trained (a graph CLIP): a run names its own in model_config.json.
RUN_EVALUATORS = get_registry("run_evaluator")


def load_run_model(run_dir: Path | ModelSpec, device: torch.device):  # type: ignore[no-untyped-def]
    """A run folder (poisonlab's, or any open_clip local-dir folder), or a model spec (architecture + weights:
    open_clip_train's ``epoch_N.pt``, a safetensors file, a pretrained tag)."""
    if isinstance(run_dir, ModelSpec):
        try:
            return load_model(run_dir, device)
        except CheckpointError as exc:
            raise EvalError(str(exc)) from None
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvalError(f"run folder {run_dir} does not exist")
    try:
        spec = ModelSpec.from_run(run_dir)
        return load_model(spec, device)
    except CheckpointError as exc:
        raise EvalError(f"run folder {run_dir} has no usable checkpoint ({exc}); train one with `poisonlab train`") from None


def _described(model: Path | ModelSpec) -> str:
    if isinstance(model, ModelSpec):
        return f"{model.arch} + {model.weights}" if model.weights else model.arch
    return str(model)


def _attack_warnings(model: Path | ModelSpec, attack_from: Path | None, force: bool) -> list[str]:
    """A run folder's attack must be of its own dataset (``training.lineage``). A model trained elsewhere
    (``--arch/--weights``) records no training data: the user named both, so there is nothing to check."""
    if attack_from is None or isinstance(model, ModelSpec):
        return []
    try:
        return check_attack_of_run(Path(model), Path(attack_from), force)
    except DatasetMismatchError as exc:
        raise EvalError(str(exc)) from None


def evaluate_run(run_dir: Path | ModelSpec, eval_dir: Path, attack_from: Path | None = None,
                 attack_id: str | None = None, device: str = "auto", probe_seed: int = 0,
                 force: bool = False) -> dict[str, Any]:
    """Every metric the split allows; attack metrics only when ``attack_from`` names an attack, which must
    be an attack of the run's own dataset (``training.lineage``; ``force`` measures another's anyway).

    ``run_dir`` is a run folder or a ``ModelSpec`` (a model trained elsewhere, e.g. by open_clip_train).
    A run that names a registered evaluator (``run_evaluator``: a graph run) is measured by it."""
    return evaluate_run_attacks(run_dir, eval_dir, attack_from, [attack_id], device, probe_seed, force)[attack_id]


def evaluate_run_attacks(run_dir: Path | ModelSpec, eval_dir: Path, attack_from: Path | None,
                         attack_ids: Sequence[str | None], device: str = "auto", probe_seed: int = 0,
                         force: bool = False) -> dict[str | None, dict[str, Any]]:
    """``evaluate_run`` for each of several attacks of one poisoned folder: the model is loaded and its clean
    metrics (zero-shot, linear probe, retrieval) computed once, not once per attack, and each attack's result
    is the one ``evaluate_run`` gives for it."""
    evaluator = None if isinstance(run_dir, ModelSpec) else run_component(Path(run_dir), "evaluator")
    if evaluator is not None:
        measure = RUN_EVALUATORS.create(evaluator, {})
        return {a: measure(Path(run_dir), Path(eval_dir), attack_from, a, device, probe_seed, force) for a in attack_ids}
    started = time.perf_counter()
    split = load_eval_split(Path(eval_dir))  # bad splits fail before the model is built
    attacks = {a: load_attack_under_test(attack_from, a) if attack_from is not None else None for a in attack_ids}
    targets = {a: split.label_of(attack.target) if attack is not None else None for a, attack in attacks.items()}
    warnings = _attack_warnings(run_dir, attack_from, force)
    dev = pick_device(device)
    loaded = load_run_model(run_dir if isinstance(run_dir, ModelSpec) else Path(run_dir), dev)
    model = loaded.model.eval()
    fmt = ImageFormat.for_model(model, loaded.image_size)
    feats = image_features(model, fmt, split.images, dev)
    weights = zero_shot_weights(model, loaded.tokenizer, split.classnames, split.templates, dev)
    preds = predict(feats, weights)
    clean: dict[str, Any] = {
        "run": _described(run_dir), "eval": str(eval_dir), "images": len(split), "classes": len(split.classnames),
        "skipped": split.skipped, "warnings": warnings,
        "zero_shot": {"top1": float((preds == split.labels).mean()), "n": len(split)},
        "linear_probe": linear_probe_accuracy(feats.numpy(), split.labels, split.keys, seed=probe_seed),
    }
    with_caption = [i for i, c in enumerate(split.captions) if c]
    if with_caption:
        texts = text_features(model, loaded.tokenizer, [split.captions[i] for i in with_caption], dev)  # type: ignore[misc]
        clean["retrieval"] = recall_at_k(feats[with_caption], texts, [split.captions[i] for i in with_caption])  # type: ignore[misc]
    shared = time.perf_counter() - started
    results: dict[str | None, dict[str, Any]] = {}
    for attack_id, attack in attacks.items():
        begun = time.perf_counter()
        result = copy.deepcopy(clean)
        target = targets[attack_id]
        if attack is not None and target is not None:
            result["attack"] = _attack_metrics(attack, target, split, model, loaded.tokenizer, fmt, dev, feats, preds,
                                               weights)
        result["seconds"] = round(shared + time.perf_counter() - begun, 2)
        results[attack_id] = result
    return results


def _attack_metrics(attack: AttackUnderTest, target: int, split: EvalSplit, model: torch.nn.Module, tokenizer,  # type: ignore[no-untyped-def]
                    fmt: ImageFormat, dev: torch.device, feats: torch.Tensor, preds: np.ndarray,
                    weights: torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = {"source": attack.source, "name": attack.name, "target": attack.target}
    if attack.image_trigger is not None:
        images, rows = triggered_images(split, attack, target)
        trig_preds = predict(image_features(model, fmt, images, dev), weights)
        out["asr"] = image_asr(trig_preds, preds[rows], target)
    if attack.text_trigger is not None:
        out["text_asr"] = text_asr(split, attack, target, feats,
                                   lambda texts: text_features(model, tokenizer, texts, dev))
    if attack.target_images:
        names = [n for n, _ in attack.target_images]
        tp = predict(image_features(model, fmt, [a for _, a in attack.target_images], dev), weights)
        out["targeted"] = targeted_success(tp, names, target, split.classnames)
    return out


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    """The numbers experiments compare: zero-shot top-1 and the attack's main success measure."""
    attack = result.get("attack") or {}
    success = next((attack[k]["value"] for k in ("asr", "text_asr", "targeted", "probe_asr") if k in attack), None)
    return {"zero_shot": result["zero_shot"]["top1"], "attack_success": success,
            "linear_probe": result["linear_probe"]["accuracy"]}


def format_evaluation(result: dict[str, Any]) -> str:
    unit = result.get("unit", "images")
    lines = [f"evaluation of {result['run']} on {result['eval']} ({result[unit]} {unit}, {result['classes']} classes)",
             f"  zero-shot top-1 accuracy : {result['zero_shot'].get('note') or format(result['zero_shot']['top1'], '.4f')}",
             f"  linear-probe accuracy    : {result['linear_probe']['accuracy']:.4f} "
             f"(train {result['linear_probe']['train']} / test {result['linear_probe']['test']}, keyed split)"]
    if "retrieval" in result:
        r = result["retrieval"]
        lines.append(f"  retrieval recall@1/@5    : image->text {r['image_to_text_r1']:.3f}/{r['image_to_text_r5']:.3f}, "
                     f"text->image {r['text_to_image_r1']:.3f}/{r['text_to_image_r5']:.3f}")
    attack = result.get("attack")
    if attack:
        lines.append(f"  attack {attack['name']} -> target {attack['target']!r} (from {attack['source']})")
        for key, label in (("asr", "ASR"), ("text_asr", "text ASR"), ("targeted", "targeted success"),
                           ("probe_asr", "probe ASR")):
            if key in attack:
                m = attack[key]
                extra = f", untriggered rate {m['clean_target_rate']:.4f}" if "clean_target_rate" in m else ""
                lines.append(f"  {label:<25}: {m['value']:.4f} over {m['n']} {unit}{extra}")
                lines.append(f"    ({m['definition']})")
    if result.get("skipped"):
        lines.append(f"  skipped evaluation samples: {result['skipped']}")
    return "\n".join(lines)
