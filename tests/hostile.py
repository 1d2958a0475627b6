"""A generator of hostile shards: one shard per case, each with good samples around the bad ones.

Every case says what a reader must account for (``input_samples``: tar groups plus sidecar rows the
tar lacks), which keys must come out quarantined and with what reason, and which stage catches them
(the reader for headers and names, ``validate_images`` for a corrupt image body). Each shard also has
an img2dataset-style input sidecar (status "success" for every sample it meant to write), which is
how samples lost to a truncated tar are still accounted for.

The pickle payloads create a marker file when unpickled: tests assert the marker never appears.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.shards.images import encode_image

GOOD_CAPTION = "a red circle on a white background"


@dataclasses.dataclass(frozen=True)
class HostileCase:
    name: str
    shard: str
    input_samples: int  # what the books must show: tar groups + sidecar-only rows
    expected: tuple[tuple[str, str], ...]  # (quarantined key, a substring its reason must contain)
    good: tuple[str, ...]  # keys that must come through untouched
    caught_by: str = "read"  # stage that quarantines the bad keys
    shard_error: str | None = None  # substring of a shard-level error, when the tar itself is damaged


class _CreatesMarker:
    """Unpickling this runs ``open(path, "w")``: the file appearing proves a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps(_CreatesMarker(marker))


def good_jpeg(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "jpg", 90)


@functools.lru_cache(maxsize=2)
def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (900 MP at the default) that compresses to ~100 KB."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + a row of zero bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def jpeg_bomb(side: int = 60000) -> bytes:
    """A real JPEG whose frame header claims side x side pixels (decoding would need ~10 GB)."""
    data = bytearray(good_jpeg(1))
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 5 : pos + 9] = struct.pack(">HH", side, side)
    return bytes(data)


Member = tuple[str, bytes] | tarfile.TarInfo


def _sample(key: str, seed: int = 0, caption: bytes | None = None, image: bytes | None = None) -> list[Member]:
    return [
        (f"{key}.jpg", good_jpeg(seed) if image is None else image),
        (f"{key}.txt", (GOOD_CAPTION.encode() if caption is None else caption)),
        (f"{key}.json", b'{"url": "http://127.0.0.1/x.jpg"}'),
    ]


def _tar_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _sidecar(path: Path, keys: list[str]) -> None:
    """img2dataset's sidecar: one row per sample it tried, status "success" for those it wrote."""
    pq.write_table(pa.table({
        "key": keys,
        "url": [f"http://127.0.0.1/{k}.jpg" for k in keys],
        "caption": [GOOD_CAPTION] * len(keys),
        "status": ["success"] * len(keys),
        "error_message": pa.array([None] * len(keys), type=pa.string()),
    }), path)


def _keys(shard: str, n: int) -> list[str]:
    return [f"{shard}{i:04d}" for i in range(n)]


Builder = Callable[[str, Path], tuple[bytes, list[str], HostileCase]]
CASES: dict[str, Builder] = {}


def case(fn: Builder) -> Builder:
    CASES[fn.__name__] = fn
    return fn


def _data_length(members: list[Member]) -> int:
    """Bytes the members take in a tar, headers included, before the end-of-archive blocks."""
    return sum(512 + -(-len(m[1]) // 512) * 512 for m in members if not isinstance(m, tarfile.TarInfo))


@case
def truncated_tar(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    keys = _keys(shard, 5)
    samples = [_sample(k, i) for i, k in enumerate(keys)]
    cut_at = _data_length(samples[0] + samples[1]) + 512 + 300  # 300 bytes into the third sample's jpg
    data = _tar_bytes([m for s in samples for m in s])[:cut_at]
    expected = ((keys[2], "truncated_tar"), (keys[3], "missing_from_tar"), (keys[4], "missing_from_tar"))
    return data, keys, HostileCase("truncated_tar", shard, 5, expected, tuple(keys[:2]),
                                   shard_error="truncated_or_corrupt_tar")


@case
def truncated_between_members(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    """Cut exactly after a member: ``tarfile`` reads this as a normal end and loses the rest silently."""
    keys = _keys(shard, 5)
    samples = [_sample(k, i) for i, k in enumerate(keys)]
    data = _tar_bytes([m for s in samples for m in s])[: _data_length([m for s in samples[:3] for m in s])]
    expected = ((keys[2], "truncated_tar"), (keys[3], "missing_from_tar"), (keys[4], "missing_from_tar"))
    return data, keys, HostileCase("truncated_between_members", shard, 5, expected, tuple(keys[:2]),
                                   shard_error="no end-of-archive marker")


@case
def not_a_tar(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    keys = _keys(shard, 3)
    expected = tuple((k, "missing_from_tar") for k in keys)
    return b"this is not a tar file " * 64, keys, HostileCase("not_a_tar", shard, 3, expected, (),
                                                           shard_error="not_a_tar")


def _one_bad(name: str, shard: str, bad: list[Member], reason: str,
             caught_by: str = "read") -> tuple[bytes, list[str], HostileCase]:
    """good, bad, good: the bad sample has key ``{shard}0001``."""
    keys = _keys(shard, 3)
    members = _sample(keys[0], 0) + bad + _sample(keys[2], 2)
    return _tar_bytes(members), keys, HostileCase(name, shard, 3, ((keys[1], reason),), (keys[0], keys[2]),
                                                 caught_by)


@case
def corrupt_jpeg_header(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    garbage = b"\xff\xd8\xff\xe0" + b"garbage, not a JPEG segment " * 20  # a JPEG start, then noise
    return _one_bad("corrupt_jpeg_header", shard, _sample(key, image=garbage),
                    "undecodable_image")


@case
def corrupt_jpeg_body(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    body = good_jpeg(5, size=64)
    return _one_bad("corrupt_jpeg_body", shard, _sample(key, image=body[: len(body) * 2 // 3]),
                    "undecodable_image", caught_by="validate_images")


@case
def zero_byte_image(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("zero_byte_image", shard, _sample(key, image=b""), "empty_image")


@case
def decompression_bomb_png(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("decompression_bomb_png", shard, _sample(key, image=png_bomb()), "decompression_bomb")


@case
def decompression_bomb_jpeg(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("decompression_bomb_jpeg", shard, _sample(key, image=jpeg_bomb()), "decompression_bomb")


@case
def pickle_member(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("pickle_member", shard, _sample(key) + [(f"{key}.pyd", malicious_pickle(marker))],
                    "refused_member: .pyd")


@case
def pth_member(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("pth_member", shard, _sample(key) + [(f"{key}.pth", malicious_pickle(marker))],
                    "refused_member: .pth")


@case
def pickle_only_sample(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    """webdataset's ``.pickle`` extension, with no image at all."""
    key = f"{shard}0001"
    return _one_bad("pickle_only_sample", shard, [(f"{key}.pickle", malicious_pickle(marker))],
                    "refused_member: .pickle")


@case
def path_traversal(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    keys = _keys(shard, 2)
    members = _sample(keys[0], 0) + _sample("../evil", 1) + _sample("/abs/evil", 3) + _sample(keys[1], 2)
    expected = (("../evil", "unsafe_member_name"), ("/abs/evil", "unsafe_member_name"))
    return _tar_bytes(members), keys, HostileCase("path_traversal", shard, 4, expected, tuple(keys))


@case
def symlink_member(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    link = tarfile.TarInfo(f"{key}.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _one_bad("symlink_member", shard, [link] + _sample(key)[1:], "not a regular file")


@case
def duplicate_keys(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    """The same key twice in a row group (a repeated member) and again later (a repeated sample)."""
    keys = _keys(shard, 3)
    dup_member = _sample(keys[1], 1) + [(f"{keys[1]}.jpg", good_jpeg(9))]
    members = _sample(keys[0], 0) + dup_member + _sample(keys[2], 2) + _sample(keys[0], 4)
    expected = ((keys[1], "duplicate_member"), (keys[0], "duplicate_key"))
    case_ = HostileCase("duplicate_keys", shard, 4, expected, (keys[0], keys[2]))
    return _tar_bytes(members), keys, case_


@case
def missing_caption(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("missing_caption", shard, [m for m in _sample(key) if not m[0].endswith(".txt")],
                    "missing_caption")


@case
def non_utf8_caption(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("non_utf8_caption", shard, _sample(key, caption=b"caf\xe9 \xff\xfe photo"), "caption_not_utf8")


@case
def huge_caption(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    return _one_bad("huge_caption", shard, _sample(key, caption=b"spam " * 209716), "caption_too_long")


@case
def invalid_json(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    key = f"{shard}0001"
    members = _sample(key)[:2] + [(f"{key}.json", b'{"a": [' * 100000)]
    return _one_bad("invalid_json", shard, members, "invalid_json")


def write_hostile_shards(directory: Path, marker: Path) -> dict[str, HostileCase]:
    """One shard per case in ``directory`` (NNNNN.tar + img2dataset-style NNNNN.parquet)."""
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, HostileCase] = {}
    for index, (name, build) in enumerate(CASES.items()):
        shard = f"{index:05d}"
        data, sidecar_keys, hostile = build(shard, marker)
        (directory / f"{shard}.tar").write_bytes(data)
        _sidecar(directory / f"{shard}.parquet", sidecar_keys)
        cases[name] = hostile
    return cases


def write_pickle_tar(path: Path, marker: Path) -> Path:
    """A one-sample tar with a ``.pyd`` member that creates ``marker`` when unpickled."""
    key = "000000000"
    path.write_bytes(_tar_bytes(_sample(key) + [(f"{key}.pyd", malicious_pickle(marker))]))
    return path
