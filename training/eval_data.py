"""A labelled evaluation split, read safely: images, labels, captions, class names and prompt templates.

The split is a shard folder (``poisonlab synth`` writes one to ``DATA/eval``) with ``classes.json``
beside it: ``{"classnames": [...], "templates": ["a photo of a {}.", ...], "label_key": "label"}``.
Each sample's label is ``meta[label_key]`` (an index) or ``meta["class"]`` (a class name). Splits are
small by design (a few thousand images), so they are held in memory as decoded uint8 arrays; the
trainer's datasets never are.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np

from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_array
from poisonlab.shards.layout import list_shards
from poisonlab.shards.reader import ReadPolicy, read_shard

CLASSES_FILE = "classes.json"


class EvalError(ValueError):
    """Evaluation that cannot be done as asked (no class names, no checkpoint, an attack it cannot rebuild)."""


@dataclasses.dataclass
class EvalSplit:
    directory: Path
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    keys: list[str]
    images: list[np.ndarray]
    labels: np.ndarray
    captions: list[str | None]
    payload_exts: list[str]
    skipped: dict[str, int]

    def __len__(self) -> int:
        return len(self.keys)

    def label_of(self, classname: str) -> int:
        try:
            return self.classnames.index(classname)
        except ValueError:
            raise EvalError(f"{classname!r} is not one of the {len(self.classnames)} classes of {self.directory}") from None


def read_classes(directory: Path) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """Class names, templates and the label key; a split without them cannot be scored zero-shot."""
    path = Path(directory) / CLASSES_FILE
    if not path.is_file():
        raise EvalError(f"evaluation split {directory} has no {CLASSES_FILE}: zero-shot evaluation needs the class "
                        "names and prompt templates (poisonlab synth writes them to DATA/eval)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EvalError(f"{path} is not valid JSON: {exc}") from None
    classnames = tuple(data.get("classnames") or ())
    templates = tuple(data.get("templates") or ())
    if not classnames or not all(isinstance(c, str) and c for c in classnames):
        raise EvalError(f"{path} has no class names (a non-empty 'classnames' list of strings)")
    if not templates or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise EvalError(f"{path} needs 'templates': prompt strings with exactly one '{{}}' for the class name")
    return classnames, templates, str(data.get("label_key") or "label")


def _label(meta: dict, label_key: str, classnames: tuple[str, ...]) -> int | None:
    value = meta.get(label_key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classnames):
        return value
    name = meta.get("class")
    if isinstance(name, str) and name in classnames:
        return classnames.index(name)
    return None


def load_eval_split(directory: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> EvalSplit:
    directory = Path(directory)
    classnames, templates, label_key = read_classes(directory)
    try:
        shards = list_shards(directory)
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from None
    keys, images, labels, captions, exts = [], [], [], [], []
    skipped: Counter[str] = Counter()
    policy = ReadPolicy(payload_extensions=IMAGE_EXTENSIONS, require_text=False, max_pixels=max_pixels)
    for shard in shards:
        for sample in read_shard(directory, shard, policy):
            if not sample.is_live:
                skipped["not_live"] += 1
                continue
            label = _label(dict(sample.meta), label_key, classnames)
            if label is None:
                skipped["no_label"] += 1
                continue
            try:
                image = decode_array(sample.payload or b"", max_pixels)
            except ImageError as exc:
                skipped[str(exc).split(":")[0]] += 1
                continue
            keys.append(sample.key)
            images.append(image)
            labels.append(label)
            captions.append(sample.text)
            exts.append(sample.payload_ext)
    if not keys:
        raise EvalError(f"evaluation split {directory} has no labelled, decodable images (skipped: {dict(skipped)})")
    return EvalSplit(directory, classnames, templates, keys, images, np.asarray(labels, dtype=np.int64), captions,
                     exts, dict(skipped))
