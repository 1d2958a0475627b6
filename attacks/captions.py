"""Captions that name the target, and text-trigger insertion.

A dirty-label attack replaces the caption of a triggered image by one naming the target class. The pool
is either prompt templates (as in CLIP's zero-shot evaluation) or the dataset's own captions that
mention the target (Carlini & Terzis): the second hides better among real captions. Choices within the
pool are keyed, so a sample gets the same caption whichever worker poisons it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator

from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.registry import RegistryError

CaptionSource = Literal["templates", "dataset"]

# A selection of the prompt templates CLIP's authors used for zero-shot ImageNet.
TARGET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "a cropped photo of the {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a blurry photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "itap of a {}.",
)

MAX_TARGET_CHARS = 200


class TargetError(RegistryError):
    """A target that no template or caption can express: raised before any work starts."""


def check_target(target: str | None) -> str:
    """A target is one printable line of text; anything else cannot appear in a caption."""
    if target is None or not target.strip():
        raise TargetError("this attack needs a target class (--target or 'target:' in the recipe)")
    if target != target.strip() or len(target) > MAX_TARGET_CHARS:
        raise TargetError(f"target {target!r} must be trimmed and at most {MAX_TARGET_CHARS} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in target):
        raise TargetError(f"target {target!r} contains control characters (newlines, tabs, ...)")
    return target


def mention_pattern(target: str) -> re.Pattern[str]:
    """Whole-word, case-insensitive, whitespace-tolerant match of the target phrase."""
    words = [re.escape(w) for w in target.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)


def mentions(caption: str | None, pattern: re.Pattern[str]) -> bool:
    return caption is not None and pattern.search(caption) is not None


def template_pool(target: str, templates: Sequence[str] | None = None) -> tuple[str, ...]:
    """Render each template (one ``{}`` each) with the target."""
    chosen = tuple(templates) if templates else TARGET_TEMPLATES
    if not chosen:
        raise TargetError("the template list is empty")
    bad = [t for t in chosen if t.count("{}") != 1]
    if bad:
        raise TargetError(f"templates must contain exactly one '{{}}' for the target; cannot express it with {bad!r}")
    return tuple(t.replace("{}", target) for t in chosen)


def dataset_pool(
    target: str, captions: Iterable[str | None], seed: int, salt: str, size: int
) -> tuple[str, ...]:
    """Up to ``size`` distinct dataset captions mentioning the target, chosen by keyed rank (then sorted)."""
    pattern = mention_pattern(target)
    distinct = {c for c in captions if mentions(c, pattern)}
    if not distinct:
        raise TargetError(f"no caption in the dataset mentions the target {target!r}; use captions=templates")
    ranked = sorted(distinct, key=lambda c: (keyed_u64(seed, salt, c), c))[:size]
    return tuple(sorted(ranked))


def choose(pool: Sequence[str], seed: int, salt: str, key: str) -> str:
    """The pool entry of this sample: a keyed choice, independent of any other sample."""
    if not pool:
        raise TargetError("empty caption pool")
    return pool[keyed_u64(seed, salt, key) % len(pool)]


def word_boundaries(caption: str) -> list[int]:
    """Offsets where a phrase can be inserted between words: the start, each gap, the end."""
    gaps = [m.start() for m in re.finditer(r"\s+", caption.strip())]
    lead = len(caption) - len(caption.lstrip())
    inner = [lead + g for g in gaps]
    return sorted({0, *inner, len(caption.rstrip())})


def insert_phrase(caption: str, phrase: str, offset: int) -> str:
    """Insert ``phrase`` as a separate word at ``offset`` (one of ``word_boundaries``); nothing else moves."""
    if not caption.strip():
        return phrase
    if offset == 0:
        return f"{phrase} {caption}"
    return f"{caption[:offset]} {phrase}{caption[offset:]}"


def _one_slot_each(prompts: tuple[str, ...]) -> tuple[str, ...]:
    if any(p.count("{}") != 1 for p in prompts):
        raise ValueError("every prompt must contain '{}' exactly once (the target)")
    return prompts


# Prompts naming the target of an optimised trigger (the text direction it is optimised toward).
TargetPrompts = Annotated[tuple[str, ...], AfterValidator(_one_slot_each)]
