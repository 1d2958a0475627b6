"""Evaluate a graph run: zero-shot accuracy, attack success with the exact trigger, linear probe, probe ASR.

The same measures as for an image CLIP (``poisonlab.training.evaluation``), on graphs:

* zero-shot: each eval graph against the mean embedding of its split's prompt templates per class;
* ASR: the poisoned folder's attack rebuilt from its spec (``load_attack``; what is measured follows its
  ``payload_trigger`` capability), applied to every non-target eval graph exactly as poisoning did
  (``apply_sample``), then classified zero-shot;
* linear probe: a logistic regression on frozen graph embeddings of clean labelled graphs (keyed split);
* probe ASR: the triggered test-part graphs through that probe (a backdoor survives a fine-tuned head?).

Registered as the ``graph_clip`` run evaluator: ``evaluate_run`` asks the run which evaluator it names.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poisonlab.graph.codec import graph_arrays, to_batch
from poisonlab.graph.run import LoadedGraphModel, load_graph_run
from poisonlab.models.zoo import CheckpointError
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import DatasetRecordError, read_policy_for
from poisonlab.shards.fingerprint import DatasetMismatchError
from poisonlab.shards.layout import list_shards
from poisonlab.shards.reader import read_shard
from poisonlab.training.attack_eval import ASR_DEFINITION, image_asr
from poisonlab.training.eval_data import EvalError, read_classes
from poisonlab.training.features import predict, zero_shot_weights
from poisonlab.training.lineage import check_attack_of_run
from poisonlab.training.objectives import SkipSample
from poisonlab.training.precision import pick_device
from poisonlab.training.probe import fit_probe, linear_probe_accuracy

PROBE_ASR_DEFINITION = ("probe ASR = share of non-target test-part evaluation graphs that, with the attack's exact "
                        "trigger, the linear probe (fitted on clean graphs) classifies as the target class")


@dataclasses.dataclass
class GraphEvalSplit:
    """Labelled eval graphs, kept as samples (a trigger applies to a sample) with their decoded arrays."""

    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    samples: list[Sample]
    labels: np.ndarray
    skipped: dict[str, int]

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]


def load_graph_eval_split(directory: Path, in_features: int) -> GraphEvalSplit:
    """The split's live, labelled graphs that the model can read (others counted by reason)."""
    classnames, templates, label_key = read_classes(directory)
    try:
        policy = read_policy_for(Path(directory))
        shards = list_shards(Path(directory))
    except (DatasetRecordError, FileNotFoundError) as exc:
        raise EvalError(str(exc)) from None
    samples, labels, skipped = [], [], Counter[str]()
    for shard in shards:
        for sample in read_shard(Path(directory), shard, policy):
            label = sample.meta.get(label_key) if sample.is_live else None
            if not isinstance(label, int) or not 0 <= label < len(classnames):
                skipped["not_live" if not sample.is_live else "no_label"] += 1
                continue
            try:
                graph_arrays(sample.payload, in_features)
            except SkipSample as exc:
                skipped[str(exc).split(":")[0]] += 1
                continue
            samples.append(sample)
            labels.append(label)
    if not samples:
        raise EvalError(f"evaluation split {directory} has no labelled graphs the model can read (skipped: {dict(skipped)})")
    return GraphEvalSplit(classnames, templates, samples, np.asarray(labels, dtype=np.int64), dict(skipped))


@torch.no_grad()
def graph_features(loaded: LoadedGraphModel, samples: list[Sample], device: torch.device,
                   batch_size: int = 256) -> torch.Tensor:
    """Normalised graph embeddings of samples, in order."""
    out = []
    for start in range(0, len(samples), batch_size):
        items = [graph_arrays(s.payload, loaded.cfg.in_features) for s in samples[start:start + batch_size]]
        out.append(loaded.model.encode_graph(to_batch(items).to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, loaded.cfg.embed_dim)


def _attack(attack_from: Path, attack_id: str | None) -> Any:
    from poisonlab.attacks import SpecError, load_attack

    if not Path(attack_from).exists():
        raise EvalError(f"attack source {attack_from} does not exist")
    try:
        spec = load_attack(Path(attack_from), attack_id)
    except (SpecError, ValueError, KeyError) as exc:
        raise EvalError(f"cannot rebuild the attack from {attack_from}: {exc}") from None
    if spec.target is None or not spec.has_payload_trigger:
        raise EvalError(f"attack {spec.id!r} ({spec.name}) in {attack_from} has no target and payload trigger "
                        "that a graph evaluation could reproduce")
    return spec


def _attack_metrics(spec: Any, split: GraphEvalSplit, loaded: LoadedGraphModel, dev: torch.device,
                    weights: torch.Tensor | None, clean_preds: np.ndarray | None, probe: Any,
                    is_train: np.ndarray) -> dict[str, Any]:
    """ASR (zero-shot: models with a text tower) and probe ASR of the triggered non-target graphs."""
    try:
        target = split.classnames.index(spec.target)
    except ValueError:
        raise EvalError(f"{spec.target!r} is not one of the classes of the evaluation split") from None
    rows = [i for i in range(len(split.samples)) if split.labels[i] != target]
    triggered = [spec.apply_sample(split.samples[i]) for i in rows]
    feats = graph_features(loaded, triggered, dev)
    out: dict[str, Any] = {"name": spec.name, "target": spec.target}
    if weights is not None and clean_preds is not None:
        out["asr"] = {**image_asr(predict(feats, weights), clean_preds[rows], target),
                      "definition": ASR_DEFINITION.replace("images", "graphs")}
    test = [j for j, i in enumerate(rows) if not is_train[i]]
    if probe is not None and test:
        hits = probe.predict(feats.numpy()[test]) == target
        out["probe_asr"] = {"value": float(hits.mean()), "n": len(test), "definition": PROBE_ASR_DEFINITION}
    return out


def _zero_shot(loaded: LoadedGraphModel, split: GraphEvalSplit, feats: torch.Tensor,
               dev: torch.device) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """Class weights from the split's templates and the predictions; (None, None) without a text tower."""
    if not loaded.model.has_text:
        return None, None
    weights = zero_shot_weights(loaded.model, loaded.tokenizer, split.classnames, split.templates, dev)
    return weights, predict(feats, weights)


def evaluate_graph_run(run_dir: Path, eval_dir: Path, attack_from: Path | None = None, attack_id: str | None = None,
                       device: str = "auto", probe_seed: int = 0, force: bool = False) -> dict[str, Any]:
    """Every metric of a graph run on a labelled graph split (attack metrics when ``attack_from`` is given)."""
    started = time.perf_counter()
    dev = pick_device(device)
    try:
        loaded = load_graph_run(Path(run_dir), dev)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None
    split = load_graph_eval_split(Path(eval_dir), loaded.cfg.in_features)
    spec = _attack(Path(attack_from), attack_id) if attack_from is not None else None
    try:
        warnings = check_attack_of_run(Path(run_dir), Path(attack_from), force) if attack_from is not None else []
    except DatasetMismatchError as exc:
        raise EvalError(str(exc)) from None
    feats = graph_features(loaded, split.samples, dev)
    weights, preds = _zero_shot(loaded, split, feats, dev)
    probe, is_train = fit_probe(feats.numpy(), split.labels, split.keys, seed=probe_seed)
    result: dict[str, Any] = {
        "run": str(run_dir), "eval": str(eval_dir), "unit": "graphs", "graphs": len(split.samples),
        "classes": len(split.classnames), "skipped": split.skipped, "warnings": warnings,
        "zero_shot": ({"top1": float((preds == split.labels).mean()), "n": len(split.samples)} if preds is not None
                      else {"top1": float("nan"), "n": 0, "note": "a graph-only model (no text tower): no zero-shot"}),
        "linear_probe": linear_probe_accuracy(feats.numpy(), split.labels, split.keys, seed=probe_seed)}
    if spec is not None:
        result["attack"] = {"source": str(attack_from),
                            **_attack_metrics(spec, split, loaded, dev, weights, preds, probe, is_train)}
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


get_registry("run_evaluator").register("graph_clip", Params, summary="graph CLIP run: zero-shot, ASR, linear probe, "
                                      "probe ASR on a labelled graph split")(lambda params: evaluate_graph_run)
