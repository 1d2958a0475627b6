"""Capabilities, not names: attacks registered here, under names poisonlab has never seen, are poisoned,
evaluated and triggered exactly like the built-in attacks of the same kind; detectors declare their inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field

from poisonlab.attacks import apply_trigger_to_eval, load_attack, poison_local
from poisonlab.attacks.base import (
    ADDS_SAMPLES,
    IMAGE_TRIGGER,
    STAGE,
    TARGET_IMAGES,
    TEXT_TRIGGER,
    Attack,
    Binding,
    Candidate,
    attack_capabilities,
    provenance,
)
from poisonlab.attacks.components import ATTACKS, Targeted, TargetedParams
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.filters.context import ScanContext
from poisonlab.filters.corpus import corpus_from_vectors
from poisonlab.filters.detectors import DETECTORS, Detector
from poisonlab.filters.scan import _order, detector_specs
from poisonlab.pipelines.registry import Params, RegistryError
from poisonlab.pipelines.sample import Sample
from poisonlab.training.attack_eval import TEXT_ASR_DEFINITION, load_attack_under_test, text_asr
from poisonlab.training.eval_data import load_eval_split

# --- a second caption-trigger attack, unknown to poisonlab: appends its phrase instead of inserting it -----


class SuffixParams(Params):
    phrase: str = Field("zq", description="appended to the caption")


class SuffixPhrase(Attack):
    """Append a phrase to captions (a caption trigger of another shape)."""

    name = "suffix_phrase_test"
    capabilities = frozenset({TEXT_TRIGGER})

    def eligible(self, candidate: Candidate, names_target: bool) -> bool:
        return candidate.caption is not None and not names_target

    def apply_text(self, caption: str, key: str, binding: Binding) -> str:
        return f"{caption} {self.params.phrase}"  # type: ignore[attr-defined]

    def poison(self, sample: Sample, binding: Binding) -> Sample:
        caption = self.apply_text(sample.text or "", sample.key, binding)
        sha = hashlib.sha256(sample.payload or b"").hexdigest()
        record = provenance(binding, self.name, "modified", sample.text, caption, sha, {"where": "caption"})
        return sample.changed(STAGE, text=caption, meta={**sample.meta, "poisonlab": record})


class RepeatImage(Targeted):
    """A targeted attack under another name: its donor image is what it wants classified as the target."""

    name = "repeat_image_test"


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """Register the new components through the registry API, only while this module runs (another module
    lists every registered attack)."""
    ATTACKS.register("suffix_phrase_test", SuffixParams)(SuffixPhrase)
    ATTACKS.register("repeat_image_test", TargetedParams)(RepeatImage)
    DETECTORS.register("worst_of_test", WorstOfParams)(WorstOf)
    yield
    for registry, name in ((ATTACKS, "suffix_phrase_test"), (ATTACKS, "repeat_image_test"),
                           (DETECTORS, "worst_of_test")):
        registry._items.pop(name)  # no public unregister: registrations are meant to be permanent


@pytest.fixture(scope="module")
def suffix_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suffix") / "run"
    recipe = parse_recipe({"attacks": [{"attack": "suffix_phrase_test", "target": "red circle", "count": 4}]})
    assert poison_local(tiny_shards, out, recipe)["poisoned"] == 4
    return out


def test_capabilities_are_declared_on_the_registered_classes() -> None:
    assert attack_capabilities("badnets") == {IMAGE_TRIGGER} == attack_capabilities("label_consistent")
    assert attack_capabilities("text_trigger") == {TEXT_TRIGGER} == attack_capabilities("suffix_phrase_test")
    assert attack_capabilities("targeted") == {ADDS_SAMPLES, TARGET_IMAGES} == attack_capabilities("repeat_image_test")
    assert ATTACKS.create("repeat_image_test", {}).adds_samples and not ATTACKS.create("badnets", {}).adds_samples
    with pytest.raises(TypeError, match="unknown capabilities"):
        type("Odd", (Attack,), {"name": "odd", "capabilities": frozenset({"mind_control"})})


def test_a_new_caption_trigger_attack_gets_text_asr_without_a_name_check(suffix_run: Path, eval_split: Path) -> None:
    spec = load_attack(suffix_run)
    assert spec.has_text_trigger and not spec.is_image_trigger and not spec.has_target_images
    attack = load_attack_under_test(suffix_run)
    assert attack.text_trigger is not None and attack.image_trigger is None and not attack.target_images
    assert attack.text_trigger("a blue star", "k") == "a blue star zq"
    split = load_eval_split(eval_split)
    target = split.label_of("red circle")
    image_feats = torch.eye(len(split))
    first_target = int(np.flatnonzero(split.labels == target)[0])

    def encode(texts: list[str]) -> torch.Tensor:  # a model the phrase fully steers towards a target image
        rows = [first_target if t.endswith(" zq") else (first_target + 1) % len(split) for t in texts]
        return image_feats[rows]

    result = text_asr(split, attack, target, image_feats, encode)
    assert result["definition"] == TEXT_ASR_DEFINITION and result["n"] == len(split) - 2
    assert result["value"] == 1.0 and result["clean_target_rate"] == 0.0


def test_a_new_caption_trigger_attack_triggers_an_eval_split(suffix_run: Path, eval_split: Path, tmp_path: Path) -> None:
    result = apply_trigger_to_eval(eval_split, suffix_run, tmp_path / "ev")
    assert result["triggered"] == 46 and result["by_status"] == {"changed": 46, "dropped": 2}


def test_a_new_targeted_attack_is_evaluated_on_its_target_images(tiny_shards: Path, tmp_path: Path) -> None:
    recipe = parse_recipe({"attacks": [{"attack": "repeat_image_test", "target": "green square", "count": 3,
                                        "params": {"image_key": "000010002"}}]})
    assert poison_local(tiny_shards, tmp_path / "run", recipe)["poisoned"] == 3
    attack = load_attack_under_test(tmp_path / "run")
    assert [name for name, _ in attack.target_images] == ["000010002"]
    assert attack.target_images[0][1].ndim == 3 and attack.image_trigger is None and attack.text_trigger is None


# --- detectors declare the score columns they combine --------------------------------------------------------


class WorstOfParams(Params):
    columns: list[str] = Field(..., min_length=1)


class WorstOf(Detector):
    """The largest of other detectors' scores (an ensemble under another name)."""

    def __init__(self, params: WorstOfParams) -> None:
        self.uses = tuple(params.columns)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        return np.nanmax(np.vstack([ctx.columns[c] for c in self.uses]), axis=0)


def test_a_new_combining_detector_is_ordered_and_checked_by_its_declared_inputs() -> None:
    specs = detector_specs({"worst": {"detector": "worst_of_test", "columns": ["kdist", "spectral"]},
                            "kdist": {"k": 3}, "spectral": {}})
    created = {s.column: s.create() for s in specs}
    assert [s.column for s in _order(specs, created)] == ["kdist", "spectral", "worst"]
    with pytest.raises(RegistryError, match=r"worst_of_test 'worst' combines \['dao'\]"):
        detector_specs({"worst": {"detector": "worst_of_test", "columns": ["kdist", "dao"]}, "kdist": {}})
    ctx = ScanContext(corpus_from_vectors(np.eye(6, dtype=np.float32)))
    for spec in _order(specs, created):
        ctx.columns[spec.column] = created[spec.column].score(ctx, "model")
    np.testing.assert_allclose(ctx.columns["worst"], np.maximum(ctx.columns["kdist"], ctx.columns["spectral"]))
