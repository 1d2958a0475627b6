"""The built-in generated dataset: coloured shapes on varied backgrounds with web-like captions.

It is the embedded default for the demo and the tests, and rich enough that a small CLIP learns its
24 classes (6 shapes x 4 colours) from captions alone: objects vary in size, position, rotation and
background, and captions come from many templates, some partial or noisy as web captions are.
Everything is drawn from keyed randomness, so the same seed gives the same bytes on any worker.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import encode_image
from poisonlab.shards.layout import atomic_write_json, shard_name

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 80, 220),
    "yellow": (235, 215, 40),
}
BACKGROUNDS = {"white": (235, 235, 235), "black": (25, 25, 25), "gray": (128, 128, 128), "beige": (200, 185, 160)}
TEXTURES = ("plain", "noise", "gradient", "stripes")
SIZES = {"small": 0.22, "medium": 0.30, "large": 0.40}
CLASSNAMES = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)

ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a photo of the {}.",
)

CAPTION_TEMPLATES = (
    "a photo of a {colour} {shape}.",
    "a {size} {colour} {shape} on a {bg} background",
    "{colour} {shape}",
    "a {colour} {shape} {where}",
    "picture of a {size} {colour} {shape}",
    "an image showing a {colour} {shape} on {bg}",
    "{colour} {shape} clipart, {bg} background",
    "my {colour} {shape}",
    "a {shape} in {colour}",
    "the {colour} {shape} {where} of the frame",
    "close-up of a {colour} {shape}",
    "simple {colour} {shape} icon",
    "a drawing of a {size} {colour} {shape}",
    "{size} {colour} {shape} isolated on {bg}",
    "a {colour} coloured {shape}",
)
PARTIAL_TEMPLATES = ("a {shape} on a {bg} background", "something {colour}", "a {size} {shape}", "{shape} shape")
NOISE_PREFIXES = ("IMG_{n}.jpg ", "stock photo: ", "free download - ", "[HD] ")
NOISE_SUFFIXES = (" | free stock image", " #art #design", " - buy now", " (1024x768)", " ...")
JUNK_CAPTIONS = ("click here for more", "untitled", "image", "download", "view full size")


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """What to generate; the same spec always generates the same bytes."""

    samples: int
    seed: int = 0
    image_size: int = 32
    samples_per_shard: int = 1000
    quality: int = 95
    partial_rate: float = 0.10
    noise_rate: float = 0.15
    junk_rate: float = 0.02

    def shard_count(self) -> int:
        return max(1, math.ceil(self.samples / self.samples_per_shard))

    def shard_range(self, index: int) -> range:
        start = index * self.samples_per_shard
        return range(start, min(self.samples, start + self.samples_per_shard))


def sample_key(index: int, samples_per_shard: int) -> str:
    """img2dataset's key layout: 5 digits of shard, 4 of position (wider when shards are larger)."""
    width = max(4, len(str(samples_per_shard - 1)))
    return f"{index // samples_per_shard:05d}{index % samples_per_shard:0{width}d}"


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        pts = [(x * math.sqrt(2) * 0.8, y * math.sqrt(2) * 0.8) for x, y in pts]
    elif shape == "diamond":
        pts = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = 1.0 if k % 2 == 0 else 0.42
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
    else:
        raise ValueError(shape)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _background(rng: np.random.Generator, size: int, bg: str, texture: str) -> np.ndarray:
    base = np.array(BACKGROUNDS[bg], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    if texture == "noise":
        img += rng.normal(0, 18, size=(size, size, 1)).astype(np.float32)
    elif texture == "gradient":
        ramp = np.linspace(-30, 30, size, dtype=np.float32)
        img += ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
    elif texture == "stripes":
        period = max(2, size // int(rng.integers(4, 9)))
        stripes = ((np.arange(size) // period) % 2).astype(np.float32) * 24 - 12
        img += stripes[:, None, None]
    return np.clip(img, 0, 255)


@dataclasses.dataclass(frozen=True)
class SynthObject:
    shape: str
    colour: str
    size: str
    bg: str
    texture: str
    cx: float
    cy: float
    angle: float

    @property
    def classname(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def label(self) -> int:
        return CLASSNAMES.index(self.classname)

    def where(self) -> str:
        horiz = "on the left" if self.cx < 0.4 else "on the right" if self.cx > 0.6 else "in the middle"
        vert = "at the top" if self.cy < 0.4 else "at the bottom" if self.cy > 0.6 else ""
        return f"{vert} {horiz}".strip() if vert else horiz


def draw_object(rng: np.random.Generator, label: int | None = None) -> SynthObject:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    if label is not None:
        colour, shape = CLASSNAMES[label].split(" ")
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    r = SIZES[size]
    return SynthObject(
        shape=shape,
        colour=colour,
        size=size,
        bg=list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))],
        texture=TEXTURES[int(rng.integers(len(TEXTURES)))],
        cx=float(rng.uniform(r, 1 - r)),
        cy=float(rng.uniform(r, 1 - r)),
        angle=float(rng.uniform(-0.26, 0.26)),
    )


def render(obj: SynthObject, rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw at 4x and downsample, so small images still have clean, anti-aliased edges."""
    scale = 4
    big = size * scale
    canvas = Image.fromarray(_background(rng, size, obj.bg, obj.texture).astype(np.uint8)).resize(
        (big, big), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(canvas)
    jitter = rng.integers(-18, 19, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[obj.colour], jitter, strict=True))
    cx, cy, r = obj.cx * big, obj.cy * big, SIZES[obj.size] * big
    if obj.shape == "circle":
        draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=fill)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r, obj.angle), fill=fill)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def caption_for(obj: SynthObject, rng: np.random.Generator, spec: SynthSpec) -> str:
    words = {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "bg": obj.bg, "where": obj.where()}
    u = rng.random()
    if u < spec.junk_rate:
        return JUNK_CAPTIONS[int(rng.integers(len(JUNK_CAPTIONS)))]
    if u < spec.junk_rate + spec.partial_rate:
        text = PARTIAL_TEMPLATES[int(rng.integers(len(PARTIAL_TEMPLATES)))].format(**words)
    else:
        text = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(**words)
    if rng.random() < spec.noise_rate:
        if rng.random() < 0.5:
            text = NOISE_PREFIXES[int(rng.integers(len(NOISE_PREFIXES)))].format(n=int(rng.integers(1000, 9999))) + text
        else:
            text = text + NOISE_SUFFIXES[int(rng.integers(len(NOISE_SUFFIXES)))]
    return text


def make_sample(spec: SynthSpec, index: int, split: str = "train", label: int | None = None) -> Sample:
    key = sample_key(index, spec.samples_per_shard)
    rng = keyed_rng(spec.seed, f"synth/{split}", key)
    obj = draw_object(rng, label)
    pixels = render(obj, rng, spec.image_size)
    meta = {
        "class": obj.classname,
        "label": obj.label,
        "shape": obj.shape,
        "colour": obj.colour,
        "size": obj.size,
        "background": f"{obj.bg} {obj.texture}",
        "width": spec.image_size,
        "height": spec.image_size,
    }
    return Sample(key=key, payload=encode_image(pixels, "jpg", spec.quality), payload_ext="jpg",
                  text=caption_for(obj, rng, spec), meta=meta)


@dataclasses.dataclass(frozen=True)
class SynthSource:
    """A shard source that generates shard ``NNNNN`` of a spec instead of reading it (generated datasets of
    other modalities subclass it and override ``make`` and ``classes``)."""

    spec: SynthSpec
    split: str = "train"
    balanced: bool = False  # eval split: labels cycle through every class
    classes: ClassVar[int] = len(CLASSNAMES)

    def make(self, index: int, label: int | None) -> Sample:
        return make_sample(self.spec, index, self.split, label)

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        for index in self.spec.shard_range(int(shard)):
            yield self.make(index, index % self.classes if self.balanced else None)

    def shards(self) -> list[str]:
        return [shard_name(i) for i in range(self.spec.shard_count())]


def write_classes(directory: Path, classnames: Sequence[str], templates: Sequence[str]) -> Path:
    """``classes.json`` beside the eval shards: class names, zero-shot templates, the label key."""
    path = Path(directory) / "classes.json"
    atomic_write_json(path, {"classnames": list(classnames), "templates": list(templates), "label_key": "label"})
    return path


def write_eval_metadata(directory: Path) -> Path:
    """``classes.json`` beside the eval shards: what zero-shot classification needs."""
    return write_classes(directory, CLASSNAMES, ZERO_SHOT_TEMPLATES)
