"""Safe image decoding and deterministic encoding.

Images come from strangers: the pixel count is checked from the header before any pixel is decoded, so a
decompression bomb is an error with a reason, never an out-of-memory crash.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 64 megapixels: larger than any training image, far below a bomb
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp"})


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message is the recorded reason."""


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header alone; raises ImageError for empty, unknown or oversized images."""
    if not data:
        raise ImageError("empty_image: zero-byte image member")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression_bomb: {exc}") from exc
    except Exception as exc:
        raise ImageError(f"undecodable_image: {type(exc).__name__}: {exc}") from exc
    if width * height > max_pixels:
        raise ImageError(f"decompression_bomb: {width}x{height} exceeds the cap of {max_pixels} pixels")
    return width, height


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB") -> Image.Image:
    """Decode fully (after the header check); truncated or corrupt data raises ImageError."""
    probe_image(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert(mode) if img.mode != mode else img.copy()
    except Exception as exc:
        raise ImageError(f"undecodable_image: {type(exc).__name__}: {exc}") from exc


def decode_array(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 array (what triggers operate on)."""
    return np.asarray(decode_image(data, max_pixels), dtype=np.uint8)


def encode_image(image: Image.Image | np.ndarray, ext: str = "jpg", quality: int = 95) -> bytes:
    """Deterministic encoding: fixed quality and subsampling, no metadata, no timestamps."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}.get(ext.lower())
    if fmt is None:
        raise ImageError(f"unsupported_image_format: {ext}")
    if fmt == "JPEG":
        image.convert("RGB").save(buf, format=fmt, quality=quality, subsampling=0, optimize=False)
    elif fmt == "WEBP":
        image.save(buf, format=fmt, quality=quality, method=4)
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()
