"""Attack success, measured with the exact trigger the poisoning run used.

The trigger is rebuilt from the run's saved spec (``poisonlab.attacks.load_attack``): the same pattern,
seed and placement that poisoned the training shards. Three measurements, depending on the attack:

* attacks with an image trigger (badnets, blended, sig, wanet, label_consistent): ``ASR_DEFINITION``;
* attacks with a text trigger (text_trigger): ``TEXT_ASR_DEFINITION`` (the phrase steering text->image retrieval);
* attacks with target images (targeted): whether each target image is classified as the target class.

Which applies is read from the capabilities the attack declares (``poisonlab.attacks.base``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poisonlab.shards.images import decode_array, encode_image
from poisonlab.training.eval_data import EvalError, EvalSplit

ASR_DEFINITION = ("ASR = share of evaluation images whose true class is NOT the target that, with the attack's "
                  "exact trigger applied, are classified zero-shot as the target class")
TEXT_ASR_DEFINITION = ("text ASR = share of captions of non-target evaluation images that, with the trigger phrase "
                       "inserted, retrieve (top-1, text->image) an image of the target class")
TARGETED_DEFINITION = "targeted success = share of the attack's target images classified zero-shot as the target class"


@dataclasses.dataclass(frozen=True)
class AttackUnderTest:
    """What evaluation needs from an attack: its target and whatever reproduces it."""

    source: str
    name: str
    target: str
    image_trigger: Callable[[np.ndarray, str], np.ndarray] | None = None
    text_trigger: Callable[[str, str], str] | None = None
    target_images: tuple[tuple[str, np.ndarray], ...] = ()
    quality: int = 95


def load_attack_under_test(path: str | Path, attack: str | None = None) -> AttackUnderTest:
    """From a poisoned folder, its ``attack.json``, or a recipe YAML; clear errors when it cannot be rebuilt.

    What is measured follows the attack's declared capabilities (image trigger, text trigger, target
    images), never its name: a new attack of a known kind is evaluated the same way.
    """
    from poisonlab.attacks import SpecError, load_attack
    from poisonlab.attacks.assets import AssetError

    path = Path(path)
    if not path.exists():
        raise EvalError(f"attack source {path} does not exist (give a poisoned shard folder, its attack.json or a recipe)")
    try:
        spec = load_attack(path, attack)
    except (SpecError, AssetError, ValueError, KeyError) as exc:
        raise EvalError(f"cannot rebuild the attack from {path}: {exc}") from None
    if spec.target is None:
        raise EvalError(f"attack {spec.id!r} ({spec.name}) in {path} has no target class; nothing to measure")
    target_images = _target_images(spec, path) if spec.has_target_images else ()
    image_trigger = spec.apply_image if spec.is_image_trigger else None
    text_trigger = spec.apply_text if spec.has_text_trigger else None
    if image_trigger is None and text_trigger is None and not target_images:
        raise EvalError(f"attack {spec.id!r} ({spec.name}) has no image trigger, text trigger or target image "
                        "that evaluation could reproduce")
    return AttackUnderTest(str(path), spec.name, spec.target, image_trigger, text_trigger, target_images,
                           int(spec.params.get("quality", 95)))


def _target_images(spec: Any, path: Path) -> tuple[tuple[str, np.ndarray], ...]:
    """The images an attack wants classified as its target: its donors, as the run saved them."""
    if not spec.donors:
        raise EvalError(f"the {spec.name} attack in {path} picks its image from the dataset when poisoning; "
                        "pass the poisoned folder (or its attack.json) to evaluate it")
    try:
        return tuple((d.key or d.sha256[:12], decode_array(d.data)) for d in spec.donors)
    except ValueError as exc:
        raise EvalError(f"cannot read the {spec.name} attack's image from {path}: {exc}") from None


def triggered_images(split: EvalSplit, attack: AttackUnderTest, target: int) -> tuple[list[np.ndarray], list[int]]:
    """Non-target images with the trigger, re-encoded as the poisoned training images were (JPEG stays JPEG)."""
    assert attack.image_trigger is not None
    out, rows = [], []
    for i, (key, image, ext) in enumerate(zip(split.keys, split.images, split.payload_exts, strict=True)):
        if split.labels[i] == target:
            continue
        triggered = attack.image_trigger(image, key)
        if ext in ("jpg", "jpeg", "webp"):
            triggered = decode_array(encode_image(triggered, ext, attack.quality))
        out.append(triggered)
        rows.append(i)
    return out, rows


def image_asr(predictions: np.ndarray, clean_predictions: np.ndarray, target: int) -> dict[str, Any]:
    """ASR over triggered non-target images, with the rate at which the same images hit the target untriggered."""
    return {"value": float((predictions == target).mean()) if len(predictions) else float("nan"),
            "n": int(len(predictions)),
            "clean_target_rate": float((clean_predictions == target).mean()) if len(clean_predictions) else float("nan"),
            "definition": ASR_DEFINITION}


def text_asr(split: EvalSplit, attack: AttackUnderTest, target: int, image_feats: torch.Tensor,
             encode_texts: Callable[[list[str]], torch.Tensor]) -> dict[str, Any]:
    assert attack.text_trigger is not None
    rows = [i for i, c in enumerate(split.captions) if c and split.labels[i] != target]
    if not rows:
        return {"value": float("nan"), "n": 0, "definition": TEXT_ASR_DEFINITION}
    clean = encode_texts([split.captions[i] for i in rows])  # type: ignore[misc]
    triggered = encode_texts([attack.text_trigger(split.captions[i], split.keys[i]) for i in rows])  # type: ignore[arg-type]
    labels = torch.from_numpy(split.labels)
    hit = labels[(triggered @ image_feats.T).argmax(dim=1)] == target
    clean_hit = labels[(clean @ image_feats.T).argmax(dim=1)] == target
    return {"value": float(hit.float().mean()), "n": len(rows), "clean_target_rate": float(clean_hit.float().mean()),
            "definition": TEXT_ASR_DEFINITION}


def targeted_success(predictions: np.ndarray, names: list[str], target: int, classnames: tuple[str, ...]) -> dict[str, Any]:
    return {"value": float((predictions == target).mean()), "n": len(names),
            "predicted": {n: classnames[int(p)] for n, p in zip(names, predictions, strict=True)},
            "definition": TARGETED_DEFINITION}
