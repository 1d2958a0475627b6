"""Evaluation of the global model after each round: zero-shot accuracy and attack success rate.

The split, the zero-shot classifier and the exact trigger are those of ``poisonlab evaluate``
(``training.evaluation`` / ``training.attack_eval``): the trigger is rebuilt from the poisoned folder's
``attack.json``. The split and the triggered images are prepared once; each round only swaps the weights
into one model, so a round's evaluation costs two passes over the split.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poisonlab.models.zoo import LoadedModel, ModelSpec, load_model, quiet_random_init
from poisonlab.training.attack_eval import image_asr, load_attack_under_test, triggered_images
from poisonlab.training.eval_data import EvalSplit, load_eval_split
from poisonlab.training.features import image_features, predict, zero_shot_weights
from poisonlab.training.image_codec import ImageFormat


@dataclasses.dataclass
class GlobalEvaluator:
    """Zero-shot and ASR of any weights of one architecture on one split (with one attack, if any)."""

    split: EvalSplit
    loaded: LoadedModel
    target: int | None = None
    attack_name: str | None = None
    triggered: list[np.ndarray] | None = None
    rows: list[int] | None = None

    @classmethod
    def open(cls, eval_dir: Path, arch: str, attack_from: Path | None = None,
             attack_id: str | None = None) -> GlobalEvaluator:
        split = load_eval_split(Path(eval_dir))
        with quiet_random_init():
            loaded = load_model(ModelSpec(arch), "cpu")
        if attack_from is None:
            return cls(split, loaded)
        attack = load_attack_under_test(attack_from, attack_id)
        target = split.label_of(attack.target)
        images, rows = triggered_images(split, attack, target) if attack.image_trigger else (None, None)
        return cls(split, loaded, target, attack.name, images, rows)

    @torch.no_grad()
    def __call__(self, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        model = self.loaded.model
        model.load_state_dict(weights)
        model.eval()
        dev = torch.device("cpu")
        fmt = ImageFormat.for_model(model, self.loaded.image_size)
        classifier = zero_shot_weights(model, self.loaded.tokenizer, self.split.classnames, self.split.templates, dev)
        preds = predict(image_features(model, fmt, self.split.images, dev), classifier)
        out: dict[str, Any] = {"zero_shot": float((preds == self.split.labels).mean()), "asr": None}
        if self.triggered is not None and self.target is not None:
            trig = predict(image_features(model, fmt, self.triggered, dev), classifier)
            out["asr"] = float(image_asr(trig, preds[self.rows], self.target)["value"])
        return out
