"""The dataset record: which modality a shard folder holds, so every reader picks the same read policy.

``dataset.json`` sits beside ``sizes.json``. It names the modality (``image``, later ``graph``, ...) and
the payload extensions its samples carry. Readers (poison, embed, scan, clean, train) ask
``read_policy_for(folder)`` instead of building the default image policy, so a graph folder is never
refused as "not an image" and a webp folder is read as images. Folders without the record (img2dataset
output, plain tars) are image–caption datasets, as before.

Modalities are registered components (``get_registry("modality")``): an adapter registers its own with
the payload extensions and whether text is required, and nothing here changes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import Field

from poisonlab.pipelines.registry import Params, RegistryError, get_registry
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.images import IMAGE_EXTENSIONS
from poisonlab.shards.layout import atomic_write_json, sidecar_path
from poisonlab.shards.reader import ReadPolicy

DATASET_FILE = "dataset.json"
FORMAT_VERSION = 1
DEFAULT_MODALITY = "image"

MODALITIES = get_registry("modality")


class DatasetRecordError(ValueError):
    """``dataset.json`` is unreadable or names something this installation does not know."""


@dataclasses.dataclass(frozen=True)
class Modality:
    """What the samples of a dataset carry: payload extensions, whether a caption is required."""

    name: str
    payload_extensions: frozenset[str]
    require_text: bool = True
    probe_images: bool = False
    payload_probe: str | None = None  # a registered payload check (``payload_probe``) the reader runs
    probe_params: tuple[tuple[str, int], ...] = ()  # its caps

    def read_policy(self, **overrides: Any) -> ReadPolicy:
        """The reader's policy for this modality; ``overrides`` set caps such as ``max_pixels``."""
        base = {"payload_extensions": self.payload_extensions, "require_text": self.require_text,
                "probe_images": self.probe_images, "payload_probe": self.payload_probe,
                "probe_params": self.probe_params}
        return ReadPolicy(**{**base, **overrides})


class ImageModalityParams(Params):
    require_text: bool = Field(True, description="a sample without a caption is an error")


@MODALITIES.register("image", ImageModalityParams, summary="images (jpg, png, webp, bmp) with captions")
def image_modality(params: ImageModalityParams) -> Modality:
    return Modality("image", IMAGE_EXTENSIONS, require_text=params.require_text, probe_images=True)


def get_modality(name: str) -> Modality:
    """A registered modality by name (adapters register theirs through the components entry point)."""
    try:
        return MODALITIES.create(name)
    except RegistryError as exc:
        raise DatasetRecordError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    modality: str = DEFAULT_MODALITY
    payload_extensions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "modality": self.modality,
                "payload_extensions": sorted(self.payload_extensions)}


def write_dataset_record(directory: Path, modality: str, payload_extensions: tuple[str, ...] = ()) -> Path:
    """Record the folder's modality (and the payload extensions actually written, when known)."""
    get_modality(modality)  # refuse an unknown name before writing it
    path = Path(directory) / DATASET_FILE
    atomic_write_json(path, DatasetRecord(modality, tuple(sorted(set(payload_extensions)))).to_dict())
    return path


def read_dataset_record(directory: Path) -> DatasetRecord:
    """The folder's record; an image record when the folder has none."""
    path = Path(directory) / DATASET_FILE
    if not path.exists():
        return DatasetRecord()
    try:
        raw = json.loads(path.read_text())
        return DatasetRecord(str(raw["modality"]), tuple(str(e) for e in raw.get("payload_extensions", ())))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetRecordError(f"{path}: unreadable dataset record ({type(exc).__name__}: {exc})") from None


def modality_of(directory: Path) -> Modality:
    return get_modality(read_dataset_record(directory).modality)


def read_policy_for(directory: Path, **overrides: Any) -> ReadPolicy:
    """The read policy every stage uses on this folder: the modality's, with caps overridden."""
    return modality_of(directory).read_policy(**overrides)


def copy_dataset_record(src: Path, dst: Path) -> None:
    """Outputs derived from a folder (poisoned, cleaned) keep its modality."""
    record = read_dataset_record(src)
    if (Path(src) / DATASET_FILE).exists():
        write_dataset_record(dst, record.modality, record.payload_extensions)


def written_extensions(directory: Path, shards: Iterable[str]) -> tuple[str, ...]:
    """The payload extensions of the live samples in ``shards``' sidecars (read from disk, so a resumed
    run, which skips finished shards, records the same extensions as a fresh one)."""
    found: set[str] = set()
    for shard in shards:
        path = sidecar_path(Path(directory), shard)
        if not path.exists():
            continue
        table = pq.read_table(path, columns=["status", "payload_ext"])
        found.update(ext for status, ext in zip(table.column("status").to_pylist(),
                                                 table.column("payload_ext").to_pylist(), strict=True)
                     if ext and status in LIVE_STATUSES)
    return tuple(sorted(found))
