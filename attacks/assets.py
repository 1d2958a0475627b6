"""Images an attack carries (user trigger patterns, donor images), stored by content hash beside the spec.

A run's ``attack.json`` names its assets by SHA-256 and they live in ``attack_assets/<sha256>.<ext>``,
so the folder is self-contained: evaluation rebuilds the exact trigger from it, and a tampered or
missing asset is an error, never a silently different trigger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

from PIL import Image

from poisonlab.shards.images import ImageError, decode_image
from poisonlab.shards.layout import atomic_write_bytes

ASSET_DIR = "attack_assets"
MAX_ASSET_BYTES = 16 * 1024 * 1024
_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}


class AssetError(ValueError):
    """An asset that cannot be read, decoded or verified."""


@dataclasses.dataclass(frozen=True)
class AssetRef:
    sha256: str
    ext: str

    @property
    def relpath(self) -> str:
        return f"{ASSET_DIR}/{self.sha256}.{self.ext}"

    def to_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "ext": self.ext, "path": self.relpath}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> AssetRef:
        return cls(sha256=str(data["sha256"]), ext=str(data["ext"]))


def image_ext(data: bytes) -> str:
    """The shard extension of an encoded image, from its content (never from a file name)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
    except Exception as exc:
        raise AssetError(f"not an image: {type(exc).__name__}: {exc}") from exc
    if fmt not in _FORMAT_EXT:
        raise AssetError(f"unsupported image format {fmt or 'unknown'}; use JPEG, PNG, WebP or BMP")
    return _FORMAT_EXT[fmt]


def checked_image(data: bytes, what: str) -> AssetRef:
    """Decode fully under the pixel cap, so a bad pattern fails before any work, not in every worker."""
    try:
        decode_image(data)
    except ImageError as exc:
        raise AssetError(f"{what}: {exc}") from exc
    return AssetRef(hashlib.sha256(data).hexdigest(), image_ext(data))


def read_image_file(path: str, base_dir: Path) -> tuple[AssetRef, bytes]:
    """A user image file (relative paths are relative to ``base_dir``: the recipe's folder or the cwd)."""
    full = Path(path) if Path(path).is_absolute() else Path(base_dir) / path
    try:
        size = full.stat().st_size
        if size > MAX_ASSET_BYTES:
            raise AssetError(f"image file {full} is {size} bytes, more than {MAX_ASSET_BYTES}")
        data = full.read_bytes()
    except OSError as exc:
        raise AssetError(f"cannot read image file {full}: {exc}") from exc
    return checked_image(data, f"image file {full}"), data


def write_asset(directory: Path, ref: AssetRef, data: bytes) -> None:
    path = Path(directory) / ref.relpath
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == ref.sha256:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def read_asset(directory: Path, ref: AssetRef) -> bytes:
    path = Path(directory) / ref.relpath
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AssetError(f"missing attack asset {path}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise AssetError(f"attack asset {path} does not match its SHA-256 (modified after the run?)")
    return data
