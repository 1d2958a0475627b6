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
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rawtar import header, long_name, member, pax, raw_tar

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


Builder = Callable[[str, Path], tuple[bytes, list[str] | None, HostileCase]]  # sidecar keys: None = no sidecar
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


# Tars that hide members from a reader that skips what tarfile reads (raw bytes: no writer emits them).
def _raw_sample(key: str, seed: int = 0, extra: list[tuple[str, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    return b"".join(member(name, data) for name, data in _sample(key, seed) + list(extra))


def _hidden_in_entry(name: str, shard: str, marker: Path, entry: Callable[[int], bytes]) -> tuple[bytes, list[str], HostileCase]:
    """k0 k1 ENTRY(k2 + k2.pyd as its data) k3 k4: tarfile reads the entry's data as members, so it sees k2.

    The input sidecar lists only the four samples the attacker shows; k2 must still get a row.
    """
    keys = _keys(shard, 5)
    hidden = _raw_sample(keys[2], 2, [(f"{keys[2]}.pyd", malicious_pickle(marker))])
    data = raw_tar(_raw_sample(keys[0], 0), _raw_sample(keys[1], 1), entry(len(hidden)) + hidden,
                   _raw_sample(keys[3], 3), _raw_sample(keys[4], 4))
    expected = ((keys[1], "refused_tar"), (keys[2], "hidden_member"), (keys[3], "missing_from_tar"),
                (keys[4], "missing_from_tar"))
    return data, [keys[0], keys[1], keys[3], keys[4]], HostileCase(name, shard, 5, expected, (keys[0],),
                                                                    shard_error="refused_tar")


@case
def directory_with_data(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    return _hidden_in_entry("directory_with_data", shard, marker, lambda n: header("d/", n, b"5"))


@case
def old_style_directory_with_data(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    """A "\\0"-typed entry whose name ends in "/" is a directory to tarfile, not a file."""
    return _hidden_in_entry("old_style_directory_with_data", shard, marker, lambda n: header("d/", n, b"\x00"))


@case
def symlink_with_data(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    return _hidden_in_entry("symlink_with_data", shard, marker,
                            lambda n: header("link", n, b"2", linkname=b"/etc/passwd"))


def _renamed_member(name: str, shard: str, marker: Path, rename: bytes) -> tuple[bytes, list[str], HostileCase]:
    """k0, then k1 whose .json is renamed to k1.pyd by a pax record tarfile honours, then k2."""
    keys = _keys(shard, 3)
    k1 = member(f"{keys[1]}.jpg", good_jpeg(1)) + member(f"{keys[1]}.txt", GOOD_CAPTION.encode())
    k1 += rename + member(f"{keys[1]}.json", pickle.dumps(_CreatesMarker(marker), protocol=0))
    data = raw_tar(_raw_sample(keys[0], 0), k1, _raw_sample(keys[2], 2))
    expected = ((keys[1], "refused_tar"), (keys[2], "missing_from_tar"))
    return data, keys, HostileCase(name, shard, 3, expected, (keys[0],), shard_error="refused_tar")


@case
def pax_sparse_name(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    return _renamed_member("pax_sparse_name", shard, marker, pax({"GNU.sparse.name": f"{shard}0001.pyd"}))


@case
def pax_global_path(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    return _renamed_member("pax_global_path", shard, marker, pax({"path": f"{shard}0001.pyd"}, b"g"))


@case
def gnu_sparse_member(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    keys = _keys(shard, 3)
    sparse = member(f"{keys[1]}.pyd", malicious_pickle(marker), b"S", magic=b"ustar  \x00")
    data = raw_tar(_raw_sample(keys[0], 0), member(f"{keys[1]}.jpg", good_jpeg(1)), sparse, _raw_sample(keys[2], 2))
    expected = ((keys[1], "refused_tar"), (keys[2], "missing_from_tar"))
    return data, keys, HostileCase("gnu_sparse_member", shard, 3, expected, (keys[0],), shard_error="refused_tar")


@case
def lying_size(shard: str, marker: Path) -> tuple[bytes, None, HostileCase]:
    """k1.jpg claims 512 bytes more than it has: the next header lands in data. No sidecar: 3 in, 3 rows."""
    keys = _keys(shard, 3)
    jpg = good_jpeg(1)
    lie = member(f"{keys[1]}.jpg", jpg)[512:]
    k1 = header(f"{keys[1]}.jpg", 0, size_field=b"%011o\x00" % (len(jpg) + 512)) + lie
    k1 += member(f"{keys[1]}.txt", GOOD_CAPTION.encode()) + member(f"{keys[1]}.json", b"{}")
    data = raw_tar(_raw_sample(keys[0], 0), k1, _raw_sample(keys[2], 2))
    expected = ((keys[1], "truncated_tar"), (keys[2], "hidden_member"))
    return data, None, HostileCase("lying_size", shard, 3, expected, (keys[0],), shard_error="bad header checksum")


@case
def huge_long_name(shard: str, marker: Path) -> tuple[bytes, None, HostileCase]:
    """A 2 MB GNU long-name record before k1. No sidecar: 3 in, 3 rows."""
    keys = _keys(shard, 3)
    data = raw_tar(_raw_sample(keys[0], 0), long_name(b"a" * (2 * 1024 * 1024)), _raw_sample(keys[1], 1),
                   _raw_sample(keys[2], 2))
    expected = ((keys[0], "refused_tar"), (keys[1], "hidden_member"), (keys[2], "hidden_member"))
    return data, None, HostileCase("huge_long_name", shard, 3, expected, (), shard_error="oversized extended header")


@case
def members_after_the_end(shard: str, marker: Path) -> tuple[bytes, None, HostileCase]:
    """A second archive after the end-of-archive blocks (``ignore_zeros`` readers read it)."""
    keys = _keys(shard, 3)
    data = raw_tar(_raw_sample(keys[0], 0), _raw_sample(keys[1], 1)) + raw_tar(
        _raw_sample(keys[2], 2, [(f"{keys[2]}.pyd", malicious_pickle(marker))]))
    expected = ((keys[1], "refused_tar"), (keys[2], "hidden_member"))
    return data, None, HostileCase("members_after_the_end", shard, 3, expected, (keys[0],),
                                   shard_error="data after the end-of-archive block")


@case
def zip_named_tar(shard: str, marker: Path) -> tuple[bytes, None, HostileCase]:
    """A zip archive under a .tar name, no sidecar: nothing to read, and a shard-level error that says so."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr(f"{shard}0000.jpg", good_jpeg(0))
        archive.writestr(f"{shard}0000.txt", GOOD_CAPTION)
    return buf.getvalue(), None, HostileCase("zip_named_tar", shard, 0, (), (), shard_error="not_a_tar: a zip archive")


@case
def dot_slash_duplicate(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    """``./K`` is ``K``: the second copy of k0 is a duplicate key, whatever its spelling."""
    keys = _keys(shard, 2)
    members = _sample(keys[0], 0) + _sample(keys[1], 1) + _sample(f"./{keys[0]}", 4)
    case_ = HostileCase("dot_slash_duplicate", shard, 3, ((keys[0], "duplicate_key"),), tuple(keys))
    return _tar_bytes(members), keys, case_


@case
def bidi_key(shard: str, marker: Path) -> tuple[bytes, list[str], HostileCase]:
    """A key with a right-to-left override, which displays as another key."""
    keys = _keys(shard, 3)
    evil = f"{shard}\u202e1000"
    members = _sample(keys[0], 0) + _sample(evil, 1) + _sample(keys[2], 2)
    expected = ((f"{shard}\\u202e1000", "bidirectional control character"),)
    return _tar_bytes(members), [keys[0], keys[2]], HostileCase("bidi_key", shard, 3, expected, (keys[0], keys[2]))


def write_hostile_shards(directory: Path, marker: Path) -> dict[str, HostileCase]:
    """One shard per case in ``directory`` (NNNNN.tar + img2dataset-style NNNNN.parquet)."""
    directory.mkdir(parents=True, exist_ok=True)
    cases: dict[str, HostileCase] = {}
    for index, (name, build) in enumerate(CASES.items()):
        shard = f"{index:05d}"
        data, sidecar_keys, hostile = build(shard, marker)
        (directory / f"{shard}.tar").write_bytes(data)
        if sidecar_keys is not None:
            _sidecar(directory / f"{shard}.parquet", sidecar_keys)
        cases[name] = hostile
    return cases


def write_pickle_tar(path: Path, marker: Path) -> Path:
    """A one-sample tar with a ``.pyd`` member that creates ``marker`` when unpickled."""
    key = "000000000"
    path.write_bytes(_tar_bytes(_sample(key) + [(f"{key}.pyd", malicious_pickle(marker))]))
    return path
