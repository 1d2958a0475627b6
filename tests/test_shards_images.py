"""Image probing, capped decoding and deterministic encoding."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from hostile import jpeg_bomb, png_bomb
from PIL import Image

from poisonlab.shards import images
from poisonlab.shards.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    decode_array,
    decode_image,
    encode_image,
    header_size,
    probe_image,
)

RNG = np.random.default_rng(0)


def _encoded(fmt: str, width: int, height: int, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "kw"), [("JPEG", {}), ("JPEG", {"progressive": True}),
                                         ("JPEG", {"icc_profile": b"p" * 70000}), ("PNG", {}), ("WEBP", {}),
                                         ("BMP", {}), ("MPO", {})])
@pytest.mark.parametrize("size", [(1, 1), (37, 91), (300, 20)])
def test_probe_agrees_with_pillow(fmt: str, kw: dict, size: tuple[int, int]) -> None:
    data = _encoded(fmt, *size, **kw)
    assert probe_image(data) == size
    assert decode_image(data).size == size
    if fmt in ("JPEG", "MPO", "PNG"):  # read from the header without Pillow
        assert header_size(data) == size


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "EPS", "ICO"])
def test_formats_outside_the_allow_list_are_refused(fmt: str) -> None:
    data = _encoded(fmt, 16, 16)
    with pytest.raises(ImageError, match="undecodable_image: not one of JPEG, PNG, WEBP, BMP"):
        probe_image(data)


def test_pixel_cap_applies_to_probe_and_decode() -> None:
    data = _encoded("PNG", 64, 64)
    with pytest.raises(ImageError, match="decompression_bomb: 64x64 exceeds the cap of 4000 pixels"):
        probe_image(data, max_pixels=4000)
    with pytest.raises(ImageError, match="decompression_bomb"):
        decode_image(data, max_pixels=4000)
    assert decode_array(data, max_pixels=4096).shape == (64, 64, 3)


@pytest.mark.parametrize("bomb", [png_bomb, jpeg_bomb], ids=["png", "jpeg"])
def test_bombs_are_refused_by_header(bomb) -> None:  # type: ignore[no-untyped-def]
    data = bomb()
    assert header_size(data)[0] * header_size(data)[1] > DEFAULT_MAX_PIXELS
    for fn in (probe_image, decode_image):
        with pytest.raises(ImageError, match="decompression_bomb"):
            fn(data)


def test_errors_are_reasons_that_do_not_change_between_runs() -> None:
    messages = set()
    for _ in range(3):
        with pytest.raises(ImageError) as err:
            decode_image(b"\x89PNG\r\n\x1a\n" + bytes(40))
        messages.add(str(err.value))
    assert len(messages) == 1 and " at 0x" not in messages.pop()
    with pytest.raises(ImageError, match="empty_image"):
        probe_image(b"")
    truncated = _encoded("JPEG", 64, 64)[:-400]
    assert probe_image(truncated) == (64, 64)
    with pytest.raises(ImageError, match="undecodable_image: OSError: image file is truncated"):
        decode_image(truncated)


def test_encoding_is_deterministic_and_rgb() -> None:
    pixels = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert encode_image(pixels) == encode_image(pixels.copy())
    gray = Image.fromarray(pixels[..., 0])
    assert decode_image(encode_image(gray)).mode == "RGB"
    assert decode_image(encode_image(pixels, "png")).tobytes() == pixels.tobytes()
    with pytest.raises(ImageError, match="unsupported_image_format"):
        encode_image(pixels, "tga")


# Issue 11, finding 6 (image part): modes decode to the right pixels, and claimed sizes must fit the bytes.
def _png(image: Image.Image, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    image.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    data = _png(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    pixels = decode_array(data)
    assert pixels.shape == (8, 64, 3) and pixels.min() == 0 and pixels.max() == 255
    assert np.array_equal(pixels[0, :, 0], (ramp[0] >> 8).astype(np.uint8))
    assert np.all(np.diff(pixels[0, :, 0].astype(int)) >= 0) and (pixels == 255).mean() < 0.05


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "PA"])
def test_other_png_modes_keep_their_colour_channels(mode: str) -> None:
    rgb = RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    if mode in ("P", "PA"):
        image.info["transparency"] = 0
    expected = np.asarray(image.convert("RGB"))  # alpha dropped, as open_clip's convert("RGB") does
    if mode == "PA":
        image = image.convert("RGBA")  # PNG stores palette+alpha as RGBA
        expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(decode_array(_png(image)), expected)


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buf, "JPEG", quality=95)  # red in CMYK
    red = decode_array(buf.getvalue())
    assert red[..., 0].min() > 200 and red[..., 1].max() < 60 and red[..., 2].max() < 60


def test_modes_without_a_safe_conversion_are_refused() -> None:
    with pytest.raises(ImageError, match="unsupported_image_mode: F"):
        images._as_mode(Image.new("F", (4, 4)), "RGB")


def test_a_header_claiming_far_more_pixels_than_its_bytes_is_refused() -> None:
    """1 KB of JPEG claiming 8000x8000 is refused before Pillow allocates 192 MB for it."""
    bomb = jpeg_bomb(8000)
    assert len(bomb) < 2048 and header_size(bomb) == (8000, 8000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for fn in (probe_image, decode_image):
        with pytest.raises(ImageError, match="decompression_bomb: 8000x8000 claimed by only"):
            fn(bomb)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 50


def test_large_plain_images_still_decode() -> None:
    """The ratio is generous: a blank 2000x2000 JPEG (the most compressible real photo) passes."""
    buf = io.BytesIO()
    Image.new("RGB", (2000, 2000), (255, 255, 255)).save(buf, "JPEG", quality=95)
    assert probe_image(buf.getvalue()) == (2000, 2000)
    assert decode_image(buf.getvalue()).size == (2000, 2000)
