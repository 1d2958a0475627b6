"""What every attack is: a choice of samples (planned in the driver) and what it does to each of them.

An ``Attack`` is configured from its typed parameters alone. Everything that depends on the dataset or
the run (the seed, the attack id used as a salt, the target, the caption pool, pattern and donor images)
is resolved once by the planner, saved in the run's ``attack.json`` and handed back as a ``Binding``:
workers and the evaluation split rebuild exactly the same attack from that file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from abc import ABC
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from poisonlab.attacks.assets import AssetRef
from poisonlab.attacks.captions import CaptionSource
from poisonlab.attacks.image_triggers import PatternContext, Trigger
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample

STAGE = "poison"

# What an attack is capable of, declared on its class: evaluation, the planner and the eval-trigger job ask
# these, never the attack's name, so a new attack of a known kind is measured the same way.
IMAGE_TRIGGER = "image_trigger"  # an image trigger that evaluation applies to new images (ASR)
TEXT_TRIGGER = "text_trigger"  # a caption trigger that ``apply_text`` inserts into new captions (text ASR)
ADDS_SAMPLES = "adds_samples"  # adds new samples instead of modifying chosen ones (the planner makes keys)
TARGET_IMAGES = "target_images"  # its donor images are what it wants classified as the target (targeted success)
PAYLOAD_TRIGGER = "payload_trigger"  # a trigger on a non-image payload (a graph) that ``trigger_sample`` applies
CAPABILITIES = frozenset({IMAGE_TRIGGER, TEXT_TRIGGER, ADDS_SAMPLES, TARGET_IMAGES, PAYLOAD_TRIGGER})


@dataclasses.dataclass(frozen=True)
class Donor:
    """An image an attack copies into the dataset (the targeted image, target-class images)."""

    key: str | None  # the dataset key it came from, None for a user file
    ext: str
    data: bytes = dataclasses.field(repr=False)
    caption: str | None = None  # its caption in the dataset (recorded as the "original caption")

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Binding:
    """An attack's run-time context: identical in the driver, every worker and the evaluation split."""

    id: str
    seed: int
    target: str | None
    run_id: str
    params: dict[str, Any]
    captions: tuple[str, ...] = ()
    trigger: Trigger | None = None
    donors: tuple[Donor, ...] = ()
    pattern: bytes | None = dataclasses.field(default=None, repr=False)  # the spec's asset (an optimised trigger)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What the planner knows of a sample without opening its tar (from the sidecar)."""

    shard: str
    key: str
    caption: str | None
    has_image: bool
    payload_ext: str | None = None  # the payload's extension (``npz`` for a graph), None without a payload


@dataclasses.dataclass(frozen=True)
class DonorRequest:
    """Images the planner must fetch for an attack: from a file, a named key, or keyed dataset picks."""

    count: int
    file: str | None = None
    key: str | None = None
    mentions_target: bool = True  # pick dataset images whose caption names the target (or does not)


class Attack(ABC):
    """Base of every registered attack. Subclasses declare ``capabilities`` and override what they use."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    eligibility: ClassVar[str] = ""  # what makes a sample eligible beyond having a payload (said when too few are)
    # the dataset modalities (``dataset.json``) the attack works on: the planner refuses any other
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    # does poisoning a sample spend its time in codecs that run without the GIL (decoding and re-encoding an
    # image)? The poison stage then runs it in codec threads; a caption edit stays in the stream's thread,
    # where handing it to a thread would cost more than the edit
    runs_codecs: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.capabilities) - CAPABILITIES
        if unknown:
            raise TypeError(f"{cls.__name__} declares unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")

    def __init__(self, params: Params) -> None:
        self.params = params

    @property
    def adds_samples(self) -> bool:
        return ADDS_SAMPLES in self.capabilities

    @property
    def image_trigger(self) -> bool:
        return IMAGE_TRIGGER in self.capabilities

    # -- planning (driver) --
    def eligible(self, candidate: Candidate, names_target: bool) -> bool:
        """May this sample be poisoned? ``names_target``: its caption mentions the target."""
        return candidate.has_image

    def caption_source(self) -> tuple[CaptionSource, tuple[str, ...] | None, int] | None:
        """(source, templates, pool size) when the attack writes captions naming the target."""
        return None

    def donor_request(self) -> DonorRequest | None:
        return None

    def trigger(self) -> Trigger | None:
        """The unbound image trigger, for attacks that have one."""
        return None

    def pattern_asset(self, context: PatternContext) -> tuple[AssetRef, bytes] | None:
        """The asset the run's spec carries for this attack (``Binding.pattern`` hands it back): the image
        trigger's pattern by default; an attack that computes its trigger when the run is planned (an
        optimised graph trigger) overrides this, so every worker and the evaluation use the saved bytes."""
        trigger = self.trigger()
        return trigger.pattern_asset(context) if trigger is not None else None

    def needs_target(self) -> bool:
        """Whether a target class is required with these parameters."""
        return True

    # -- work (per shard, in workers) --
    def poison(self, sample: Sample, binding: Binding) -> Sample:
        raise NotImplementedError(f"{self.name} does not modify samples")

    def make_added(self, key: str, index: int, binding: Binding) -> Sample:
        raise NotImplementedError(f"{self.name} does not add samples")

    # -- evaluation --
    def trigger_sample(self, sample: Sample, binding: Binding, stage: str, change: str, caption: str | None) -> Sample:
        """Apply a payload trigger (attacks with ``payload_trigger``): the poisoning stage and the evaluation
        split call the same code, so both see the very same trigger."""
        raise NotImplementedError(f"{self.name} has no payload trigger")

    def apply_text(self, caption: str, key: str, binding: Binding) -> str:
        raise NotImplementedError(f"{self.name} has no text trigger")


def provenance(
    binding: Binding,
    attack: str,
    change: str,
    original_caption: str | None,
    new_caption: str | None,
    original_sha256: str | None,
    placement: dict[str, Any] | None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``meta["poisonlab"]`` record of a poisoned or added sample (the manifest is built from it)."""
    record = {
        "run": binding.run_id,
        "attack": attack,
        "attack_id": binding.id,
        "change": change,
        "params": binding.params,
        "target": binding.target,
        "original_caption": original_caption,
        "new_caption": new_caption,
        "original_sha256": original_sha256,
        "placement": placement,
    }
    record.update(extra)
    return record


def image_meta(meta: Any, image: np.ndarray | Image.Image, record: dict[str, Any]) -> dict[str, Any]:
    """Sample metadata after a re-encode: size kept in sync, provenance under the reserved key."""
    out = dict(meta)
    height, width = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
    out["height"], out["width"] = int(height), int(width)
    out["poisonlab"] = record
    return out


ATTACK_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def attack_capabilities(name: str) -> frozenset[str]:
    """The capabilities a registered attack declares (read from its class, without parameters)."""
    return frozenset(getattr(get_registry("attack").get(name).factory, "capabilities", frozenset()))
