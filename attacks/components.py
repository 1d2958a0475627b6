"""The registered attacks (registry kind ``attack``), loaded through the ``poisonlab.components`` entry point.

Image-trigger attacks (``badnets``, ``blended``, ``sig``, ``wanet``) are the multimodal backdoor of
Carlini & Terzis: the triggered image's caption is replaced by one naming the target. ``label_consistent``
triggers only images whose caption already names the target and keeps the caption (clean label).
``optimised_patch`` is BadCLIP's idea on the same path: the patch is optimised on a surrogate model when the
run is planned (``attacks.patch_optimiser``). ``text_trigger`` inserts a phrase into captions, optionally pairing them with target-class images
(dirty label, as in mmPoison). ``targeted`` adds pairs that repeat one image with target captions
(Carlini & Terzis' targeted poisoning).
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator, model_validator

from poisonlab.attacks import captions as C
from poisonlab.attacks.base import (
    ADDS_SAMPLES,
    IMAGE_TRIGGER,
    STAGE,
    TARGET_IMAGES,
    TEXT_TRIGGER,
    Attack,
    Binding,
    Candidate,
    DonorRequest,
    image_meta,
    provenance,
)
from poisonlab.attacks.image_triggers import (
    TRIGGERS,
    BadNetsTriggerParams,
    BlendedTriggerParams,
    SigTriggerParams,
    Trigger,
    WaNetTriggerParams,
)
from poisonlab.attacks.optimised_trigger import OptimisedPatchTriggerParams
from poisonlab.pipelines.keyed import keyed_rng, keyed_u64
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.shards.images import decode_array, decode_image, encode_image, probe_image

ATTACKS = get_registry("attack")


class TargetCaptionParams(Params):
    captions: C.CaptionSource = Field(
        "templates", description="templates naming the target, or dataset captions that mention it"
    )
    templates: tuple[str, ...] | None = Field(None, description="own templates, each with one '{}' for the target")
    pool_size: int = Field(1000, ge=1, le=100_000, description="most dataset captions kept in the pool")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _apply_trigger(sample: Sample, binding: Binding, attack: str, new_caption: str | None) -> Sample:
    """Decode (with the pixel cap), trigger, re-encode in the same format, record provenance."""
    if binding.trigger is None:
        raise RuntimeError(f"{attack}: the trigger was not bound")
    if sample.payload is None:
        raise ValueError("missing_payload: nothing to trigger")
    image = decode_image(sample.payload)
    placement = binding.trigger.apply_in_place(image, sample.key)
    if placement is None:
        triggered, placement = binding.trigger.apply(np.asarray(image), sample.key)
        image = Image.fromarray(triggered)
    payload = encode_image(image, sample.payload_ext, binding.trigger.params.quality)
    record = provenance(binding, attack, "modified", sample.text, new_caption, _sha(sample.payload), placement)
    return sample.changed(STAGE, payload=payload, text=new_caption, meta=image_meta(sample.meta, image, record))


class ImageTriggerAttack(Attack):
    """Dirty-label backdoor: trigger the image, replace its caption with one naming the target."""

    capabilities = frozenset({IMAGE_TRIGGER})
    runs_codecs = True
    trigger_name: ClassVar[str]

    def trigger(self) -> Trigger:
        component = TRIGGERS.get(self.trigger_name)
        return component.create(self.params.model_dump(include=set(component.params.model_fields)))

    def caption_source(self) -> tuple[C.CaptionSource, tuple[str, ...] | None, int]:
        p = self.params
        return p.captions, p.templates, p.pool_size  # type: ignore[attr-defined]

    def poison(self, sample: Sample, binding: Binding) -> Sample:
        caption = C.choose(binding.captions, binding.seed, f"{binding.id}/caption", sample.key)
        return _apply_trigger(sample, binding, self.name, caption)


class BadNetsParams(BadNetsTriggerParams, TargetCaptionParams):
    pass


class BlendedParams(BlendedTriggerParams, TargetCaptionParams):
    pass


class SigParams(SigTriggerParams, TargetCaptionParams):
    pass


class WaNetParams(WaNetTriggerParams, TargetCaptionParams):
    pass


@ATTACKS.register("badnets", BadNetsParams)
class BadNets(ImageTriggerAttack):
    """BadNets patch (checkerboard/noise/solid/image) + target caption."""

    name = trigger_name = "badnets"


@ATTACKS.register("blended", BlendedParams)
class Blended(ImageTriggerAttack):
    """Blended pattern (keyed noise or an image) at alpha + target caption."""

    name = trigger_name = "blended"


@ATTACKS.register("sig", SigParams)
class Sig(ImageTriggerAttack):
    """SIG horizontal sinusoid + target caption."""

    name = trigger_name = "sig"


@ATTACKS.register("wanet", WaNetParams)
class WaNet(ImageTriggerAttack):
    """WaNet invisible warp + target caption."""

    name = trigger_name = "wanet"


class OptimisedPatchParams(OptimisedPatchTriggerParams, TargetCaptionParams):
    pass


@ATTACKS.register("optimised_patch", OptimisedPatchParams)
class OptimisedPatch(ImageTriggerAttack):
    """BadCLIP-style (Liang et al. 2024): a patch optimised on a surrogate model so that triggered images
    embed near the target's text, + target caption."""

    name = trigger_name = "optimised_patch"


# --- label_consistent ------------------------------------------------------------------------------


class LabelConsistentParams(Params):
    trigger: str = Field("badnets", description="image trigger: badnets, blended, sig or wanet")
    trigger_params: dict[str, Any] = Field(default_factory=dict, description="that trigger's parameters")

    @model_validator(mode="before")
    @classmethod
    def _expand_trigger(cls, raw: Any) -> Any:
        """Validate the inner trigger now and record all its parameters, defaults included."""
        if not isinstance(raw, dict):
            return raw
        name = raw.get("trigger", "badnets")
        if not isinstance(name, str):
            return raw
        parsed = TRIGGERS.get(name).parse(raw.get("trigger_params") or {})  # RegistryError: names, params
        return {**raw, "trigger_params": parsed.model_dump(mode="json")}


@ATTACKS.register("label_consistent", LabelConsistentParams)
class LabelConsistent(Attack):
    """Clean-label backdoor: trigger only images whose caption names the target; captions unchanged."""

    name = "label_consistent"
    capabilities = frozenset({IMAGE_TRIGGER})
    runs_codecs = True
    eligibility = "captions naming the target"

    def eligible(self, candidate: Candidate, names_target: bool) -> bool:
        return candidate.has_image and names_target

    def trigger(self) -> Trigger:
        p: LabelConsistentParams = self.params  # type: ignore[assignment]
        return TRIGGERS.create(p.trigger, p.trigger_params)

    def poison(self, sample: Sample, binding: Binding) -> Sample:
        return _apply_trigger(sample, binding, self.name, sample.text)


# --- text_trigger ----------------------------------------------------------------------------------


class TextTriggerParams(Params):
    phrase: str = Field("cf", description="the trigger phrase inserted as a separate word")
    position: Literal["start", "end", "random"] = Field("random", description="where it goes (random is keyed)")
    dirty_label: bool = Field(False, description="also replace the image by one of the target class")
    image: str | None = Field(None, description="target-class image file (dirty label; default: dataset images)")
    donors: int = Field(8, ge=1, le=256, description="target-class dataset images to draw from (dirty label)")

    @field_validator("phrase")
    @classmethod
    def _printable(cls, phrase: str) -> str:
        if not phrase.strip() or phrase != phrase.strip():
            raise ValueError("phrase must be non-empty and trimmed")
        if any(unicodedata.category(ch).startswith("C") for ch in phrase):
            raise ValueError("phrase must not contain control characters")
        return phrase

    @model_validator(mode="after")
    def _image_needs_dirty(self) -> TextTriggerParams:
        if self.image is not None and not self.dirty_label:
            raise ValueError("image=PATH is only used with dirty_label=true")
        return self


@ATTACKS.register("text_trigger", TextTriggerParams)
class TextTrigger(Attack):
    """Insert a trigger phrase into captions (keyed position); optionally with target-class images."""

    name = "text_trigger"
    capabilities = frozenset({TEXT_TRIGGER})
    params: TextTriggerParams

    def needs_target(self) -> bool:
        return self.params.dirty_label

    def eligible(self, candidate: Candidate, names_target: bool) -> bool:
        if candidate.caption is None:
            return False
        return not (self.params.dirty_label and names_target)

    def donor_request(self) -> DonorRequest | None:
        if not self.params.dirty_label:
            return None
        return DonorRequest(count=self.params.donors, file=self.params.image, mentions_target=True)

    def _offset(self, caption: str, key: str, binding: Binding) -> int:
        bounds = C.word_boundaries(caption)
        pick = {"start": lambda: 0, "end": lambda: len(bounds) - 1,
                "random": lambda: keyed_u64(binding.seed, f"{binding.id}/position", key) % len(bounds)}
        return bounds[pick[self.params.position]()]

    def apply_text(self, caption: str, key: str, binding: Binding) -> str:
        return C.insert_phrase(caption, self.params.phrase, self._offset(caption, key, binding))

    def poison(self, sample: Sample, binding: Binding) -> Sample:
        caption = sample.text or ""
        offset = self._offset(caption, sample.key, binding)
        new_caption = C.insert_phrase(caption, self.params.phrase, offset)
        placement: dict[str, Any] = {"where": "caption", "offset": offset, "phrase": self.params.phrase}
        fields: dict[str, Any] = {"text": new_caption}
        meta = dict(sample.meta)
        if self.params.dirty_label:
            donor = binding.donors[keyed_u64(binding.seed, f"{binding.id}/donor", sample.key) % len(binding.donors)]
            placement["donor_key"], placement["donor_sha256"] = donor.key, donor.sha256
            fields["payload"], fields["payload_ext"] = donor.data, donor.ext
            meta["width"], meta["height"] = probe_image(donor.data)
        original_sha = _sha(sample.payload) if sample.payload is not None else None
        meta["poisonlab"] = provenance(binding, self.name, "modified", sample.text, new_caption, original_sha, placement)
        return sample.changed(STAGE, meta=meta, **fields)


# --- targeted --------------------------------------------------------------------------------------


class TargetedParams(TargetCaptionParams):
    image_key: str | None = Field(None, description="dataset key of the image to repeat (default: a keyed pick)")
    image: str | None = Field(None, description="image file to repeat instead of a dataset image")
    augment: bool = Field(False, description="light keyed crop/flip/brightness per added copy")

    @model_validator(mode="after")
    def _one_source(self) -> TargetedParams:
        if self.image_key is not None and self.image is not None:
            raise ValueError("give image_key or image, not both")
        return self


def augment(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A light, keyed augmentation: crop 85-100% of each side, resize back, maybe flip, scale brightness."""
    h, w = image.shape[:2]
    ch, cw = max(1, int(round(h * rng.uniform(0.85, 1.0)))), max(1, int(round(w * rng.uniform(0.85, 1.0))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    flip = bool(rng.random() < 0.5)
    brightness = float(rng.uniform(0.9, 1.1))
    crop = Image.fromarray(image[y : y + ch, x : x + cw]).resize((w, h), Image.Resampling.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    out = out[:, ::-1] if flip else out
    out = np.clip(np.floor(out * brightness + 0.5), 0, 255).astype(np.uint8)
    return out, {"crop": [y, x, ch, cw], "flip": flip, "brightness": round(brightness, 6)}


@ATTACKS.register("targeted", TargetedParams)
class Targeted(Attack):
    """Add pairs repeating one image (optionally augmented) with captions naming the target."""

    name = "targeted"
    capabilities = frozenset({ADDS_SAMPLES, TARGET_IMAGES})
    params: TargetedParams

    def caption_source(self) -> tuple[C.CaptionSource, tuple[str, ...] | None, int]:
        return self.params.captions, self.params.templates, self.params.pool_size

    def donor_request(self) -> DonorRequest:
        return DonorRequest(count=1, file=self.params.image, key=self.params.image_key, mentions_target=False)

    def make_added(self, key: str, index: int, binding: Binding) -> Sample:
        donor = binding.donors[0]
        caption = C.choose(binding.captions, binding.seed, f"{binding.id}/caption", key)
        placement: dict[str, Any] = {"where": "added", "source_key": donor.key, "copy": index}
        if self.params.augment:
            image, placement["augment"] = augment(decode_array(donor.data), keyed_rng(binding.seed, f"{binding.id}/augment", key))
            payload = encode_image(image, donor.ext)
            height, width = image.shape[:2]
        else:
            payload = donor.data
            width, height = probe_image(donor.data)
        record = provenance(binding, self.name, "added", donor.caption, caption, donor.sha256, placement)
        meta = {"width": width, "height": height, "poisonlab": record}
        return Sample(key=key, payload=payload, payload_ext=donor.ext, text=caption, meta=meta,
                      status=Status.ADDED.value, touched_by=(STAGE,))


# The graph attacks register themselves in the same registry (they reuse TargetCaptionParams from here).
import poisonlab.attacks.graph_attacks  # noqa: E402,F401
