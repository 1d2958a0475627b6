"""Safe image decoding and deterministic encoding.

Images come from strangers. Only a few raster formats are ever handed to a decoder (Pillow can also
open formats such as EPS that run external programs), and the pixel count is checked from the header
before any pixel is decoded, so a decompression bomb is an error with a reason, never an out-of-memory
crash. The cap applies twice: to the size the header claims (``max_pixels``) and to the data actually
present: a header claiming more than ``MAX_PIXELS_PER_BYTE`` pixels per byte of file (beyond a floor of
``PIXELS_WITHOUT_RATIO``) is refused before Pillow allocates the frame, so 1 KB claiming 8000x8000 is
not a 192 MB allocation. Ordinary images hold well under 100 pixels a byte; only blank or synthetic
images compress past 1024.

Modes: what reaches the model is 8-bit RGB. 16-bit greyscale (``I;16*``, and ``I`` from 16-bit PNGs)
is scaled to 8 bits (Pillow's own conversion clips it, so a 16-bit gradient came out pure white);
alpha is dropped, not composited, because that is what open_clip and every ``convert("RGB")``
trainer does with the same bytes, and a detector must see the pixels the trainer will see. Palette
(with or without transparency), CMYK and YCbCr convert as Pillow converts them. Any other mode (``F``,
``LAB``, ...) is refused with a reason. Error messages are the recorded reasons: they never contain
addresses or other run-dependent text, so the sidecars of two runs stay byte-identical.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 64 megapixels: larger than any training image, far below a bomb
MAX_PIXELS_PER_BYTE = 1024  # claimed pixels per byte of file beyond which the header is not believed
PIXELS_WITHOUT_RATIO = 1024 * 1024  # up to 1 MP (3 MB decoded) any file size is believed
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_CONVERTIBLE = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp"})
# The only decoders Pillow may use (its JPEG opener also returns MPO files, as many cameras write).
DECODABLE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
_ENCODE_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message is the recorded reason."""


def _describe(exc: BaseException) -> str:
    return _ADDRESS.sub("", f"{type(exc).__name__}: {exc}")


def check_claimed_size(width: int, height: int, nbytes: int, max_pixels: int) -> None:
    """Refuse a claimed size over the cap, or far beyond what ``nbytes`` of data can plausibly hold."""
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(f"decompression_bomb: {width}x{height} exceeds the cap of {max_pixels} pixels")
    if pixels > PIXELS_WITHOUT_RATIO and pixels > MAX_PIXELS_PER_BYTE * nbytes:
        raise ImageError(f"decompression_bomb: {width}x{height} claimed by only {nbytes} bytes "
                         f"(more than {MAX_PIXELS_PER_BYTE} pixels a byte)")


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and enforce the pixel caps before anything is decoded."""
    if not data:
        raise ImageError("empty_image: zero-byte image member")
    known = header_size(data)
    if known is not None:
        check_claimed_size(*known, len(data), max_pixels)
    try:
        if known is not None and known[0] * known[1] <= (Image.MAX_IMAGE_PIXELS or 0):
            img = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)  # no bomb warning possible
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression_bomb: {_describe(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"undecodable_image: not one of {', '.join(DECODABLE_FORMATS)}") from exc
    except Exception as exc:
        raise ImageError(f"undecodable_image: {_describe(exc)}") from exc
    width, height = img.size
    try:
        check_claimed_size(width, height, len(data), max_pixels)
    except ImageError:
        img.close()
        raise
    if width <= 0 or height <= 0:
        img.close()
        raise ImageError(f"undecodable_image: empty size {width}x{height}")
    return img


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (C4, C8 and CC are tables, not frames).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height read straight from a PNG or baseline/progressive JPEG header, or None.

    The common formats take a few microseconds this way instead of a Pillow ``open``; anything unusual
    (another format, a frame size defined later by a DNL marker, a damaged marker chain) returns None
    and goes through Pillow.
    """
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return (width, height) if width > 0 and height > 0 else None
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # no frame header before the image data: let Pillow decide
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return (width, height) if width > 0 and height > 0 else None
        pos += 2 + length
    return None


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header alone; raises ImageError for empty, unknown or oversized images."""
    size = header_size(data)
    if size is None:
        img = _open_checked(data, max_pixels)
        size = img.size
        img.close()
    else:
        check_claimed_size(*size, len(data), max_pixels)
    return size


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB") -> Image.Image:
    """Decode fully (after the header check); truncated or corrupt data raises ImageError."""
    img = _open_checked(data, max_pixels)
    try:
        img.load()  # the image reads from its own BytesIO: nothing to close but that buffer
    except Exception as exc:
        img.close()
        raise ImageError(f"undecodable_image: {_describe(exc)}") from exc
    return _as_mode(img, mode)


def _as_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert a decoded image to ``mode``, correctly for 16-bit greyscale; refuse modes with no safe path."""
    if img.mode == mode:
        return img
    if img.mode in _SIXTEEN_BIT:  # Pillow's convert() clips these to 0..255: scale the 16-bit range instead
        wide = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    elif img.mode not in _CONVERTIBLE:
        img.close()
        raise ImageError(f"unsupported_image_mode: {img.mode}")
    with warnings.catch_warnings():  # palette transparency: the warning says what we do on purpose
        warnings.simplefilter("ignore", UserWarning)
        return img.convert(mode) if img.mode != mode else img


def decode_array(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 array (what triggers operate on)."""
    return np.asarray(decode_image(data, max_pixels), dtype=np.uint8)


def encode_image(image: Image.Image | np.ndarray, ext: str = "jpg", quality: int = 95) -> bytes:
    """Deterministic encoding: fixed quality and subsampling, no metadata, no timestamps."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    fmt = _ENCODE_FORMATS.get(ext.lower())
    if fmt is None:
        raise ImageError(f"unsupported_image_format: {ext}")
    if fmt == "JPEG":
        image = image if image.mode == "RGB" else image.convert("RGB")
        return _saved(image, format=fmt, quality=quality, subsampling=0, optimize=False)
    if fmt == "WEBP":
        return _saved(image, format=fmt, quality=quality, method=4)
    return _saved(image, format=fmt)


_SCRATCH = threading.local()
_SCRATCH_KEEP_BYTES = 16 * 1024 * 1024  # a scratch file grown past this by a huge image is shrunk after use


def _scratch_file() -> BinaryIO | None:
    """This thread's in-memory file with a descriptor; None in the main thread (no other thread of a run
    needs the GIL while it encodes, and the descriptor's system calls cost it about 3 %) or where the OS has
    no ``memfd_create``."""
    if threading.current_thread() is threading.main_thread():
        return None
    scratch = getattr(_SCRATCH, "file", None)
    if scratch is None and hasattr(os, "memfd_create"):
        scratch = _SCRATCH.file = os.fdopen(os.memfd_create("poisonlab-encode", os.MFD_CLOEXEC), "w+b", buffering=0)
    return scratch


def _saved(image: Image.Image, **options: Any) -> bytes:
    """Encode with Pillow into bytes, through a file descriptor where there is one.

    Pillow's encoders run without the GIL only when they write to a real file descriptor (into a BytesIO
    every block comes back through Python holding it), so threads that encode images can run on more than
    one core. The bytes are the same either way: only where Pillow writes them differs.
    """
    scratch = _scratch_file()
    if scratch is None:
        buf = io.BytesIO()
        image.save(buf, **options)
        return buf.getvalue()
    scratch.seek(0)
    try:
        image.save(scratch, **options)
        size = scratch.tell()
        return os.pread(scratch.fileno(), size, 0)
    finally:
        if scratch.tell() > _SCRATCH_KEEP_BYTES:
            scratch.truncate(0)
