"""The tar format, as much of it as shards need: stream members in, write deterministic members out.

Why not ``tarfile`` alone: its per-member cost (header objects, member lists that grow with the
archive) is several times that of everything else a shard read or write does, and in streaming mode
it takes a tar cut between two members, or a corrupt header in the middle, for a normal end. This
reader checks every header checksum, requires the end-of-archive block, never reads the data of a
member its caller does not want, caps the size of long-name and pax records, and reports anything
else with ``TarFormatError``. Writing emits exactly the bytes ``tarfile`` writes for a GNU-format
regular file with mtime 0, mode 0444 and no owner (``tarfile`` itself still writes names longer
than 100 bytes), so any tar tool reads the output.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple
from zlib import adler32

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
ZERO_BLOCK = bytes(BLOCK)
MAX_RECORD_BYTES = 1024 * 1024  # a long name or a pax header longer than this is an attack, not a name
_GNU_MAGIC = b"ustar  \x00"
_POSIX_MAGIC = b"ustar\x00"
_FILE_TYPES = frozenset({b"0", b"\x00", b"7"})
_DIR_TYPE = b"5"
_LONGNAME, _LONGLINK, _PAX, _PAX_GLOBAL = b"L", b"K", b"x", b"g"
_EXTENDED = frozenset({_LONGNAME, _LONGLINK, _PAX, _PAX_GLOBAL})
_OPENERS: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", lambda fh: gzip.GzipFile(fileobj=fh)),  # type: ignore[misc]
    (b"BZh", lambda fh: bz2.BZ2File(fh)),  # type: ignore[misc]
    (b"\xfd7zXZ", lambda fh: lzma.LZMAFile(fh)),  # type: ignore[misc]
)


class TarFormatError(ValueError):
    """The archive is truncated or corrupt; the message says where, ``member`` names the member when known."""

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class TarMember(NamedTuple):
    """One member: ``kind`` is "file", "dir" or "other" (links, devices, ...); ``data`` only when wanted."""

    name: str
    kind: str
    size: int
    data: bytes | None


def open_stream(fh: BinaryIO) -> BinaryIO:
    """The uncompressed byte stream of a tar file that may be gzip, bzip2 or xz compressed."""
    head = fh.peek(6)[:6] if hasattr(fh, "peek") else b""
    for magic, opener in _OPENERS:
        if head.startswith(magic):
            return opener(fh)
    return fh


def _number(field: bytes, where: int) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256
        if field[0] == 0xFF:
            raise TarFormatError(f"negative number in the header at byte {where}")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"invalid number {text[:16]!r} in the header at byte {where}") from None


def _byte_sum(block: bytes) -> int:
    """Sum of the bytes of a 512-byte block, in C: Adler-32's low half is 1 + the byte sum modulo 65521,
    and a 256-byte half sums to at most 65280, so each half's sum comes out exact."""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\x00", 1)[0].strip(b" ")
    try:
        expected = int(stored, 8)
    except ValueError:
        return False
    unsigned = _byte_sum(block) - sum(block[148:156]) + 256
    if unsigned == expected:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256  # some old tars
    return signed == expected


def _name(block: bytes) -> bytes:
    name = block[:100].split(b"\x00", 1)[0]
    if block[257:263] == _POSIX_MAGIC:
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name


def _pax_records(data: bytes, where: int) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarFormatError(f"invalid pax record at byte {where}") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError(f"invalid pax record at byte {where}")
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        pos += length
    return records


def _skip(fh: BinaryIO, n: int, where: int, name: str | None = None) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            raise TarFormatError(f"unexpected end of data in the member at byte {where}", name)
        n -= len(chunk)


def _read_exact(fh: BinaryIO, n: int, where: int, name: str | None = None) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise TarFormatError(
            f"unexpected end of data in the member at byte {where} ({len(data)} of {n} bytes)", name
        )
    return data


def iter_members(fh: BinaryIO, want: Callable[[str, str, int], bool]) -> Iterator[TarMember]:
    """Stream the members of an uncompressed tar; ``want(name, kind, size)`` decides whether data is read.

    Names are decoded as UTF-8 with surrogate escapes (as ``tarfile`` does), so callers can refuse
    names that are not valid UTF-8. Raises ``TarFormatError`` at the first sign of damage.
    """
    read = fh.read
    offset = 0
    long_name: bytes | None = None
    pax: dict[bytes, bytes] = {}
    while True:
        where = offset
        head = read(BLOCK)
        if len(head) != BLOCK:
            if not head:
                raise TarFormatError(f"no end-of-archive marker: the tar ends at byte {where} after a member")
            raise TarFormatError(f"truncated header at byte {where}")
        if head == ZERO_BLOCK:
            return
        if not _checksum_ok(head):
            raise TarFormatError(f"bad header checksum at byte {where}")
        try:
            size = int(head[124:135], 8) if head[135] == 0 else _number(head[124:136], where)
        except ValueError:
            size = _number(head[124:136], where)
        kind_flag = head[156:157]
        padded = size + (-size % BLOCK)
        offset += BLOCK
        if kind_flag in _EXTENDED:
            if size > MAX_RECORD_BYTES:
                raise TarFormatError(f"oversized extended header ({size} bytes) at byte {where}")
            data = _read_exact(fh, padded, where)[:size]
            offset += padded
            if kind_flag == _LONGNAME:
                long_name = data.split(b"\x00", 1)[0]
            elif kind_flag == _PAX:
                pax = _pax_records(data, where)
            continue
        raw_name = pax.get(b"path") or long_name or _name(head)
        if b"size" in pax:
            value = pax[b"size"]
            if not (value.isdigit() and len(value) <= 18):
                raise TarFormatError(f"invalid pax size at byte {where}")
            size = int(value)
            padded = size + (-size % BLOCK)
        if long_name is not None or pax:
            long_name, pax = None, {}
        name = raw_name.decode("utf-8", "surrogateescape")
        kind = "file" if kind_flag in _FILE_TYPES else "dir" if kind_flag == _DIR_TYPE else "other"
        offset += padded
        if kind == "file" and want(name, kind, size):
            data = _read_exact(fh, padded, where, name)
            yield TarMember(name, kind, size, data if padded == size else data[:size])
        else:
            _skip(fh, padded, where, name)
            yield TarMember(name, kind, size, None)


def _octal(value: int, digits: int) -> bytes:
    return b"%0*o\x00" % (digits - 1, value)


_HEAD_MODE_OWNER = _octal(0o444, 8) + _octal(0, 8) + _octal(0, 8)  # mode, uid, gid
_HEAD_MTIME = _octal(0, 12)
# After the checksum: type "regular file", no link name, GNU magic, no owner or group names, no device
# numbers or prefix, and the padding of the 512-byte block.
_HEAD_TAIL = (b"0" + bytes(100) + _GNU_MAGIC).ljust(BLOCK - 156, b"\x00")
_FIXED_SUM = sum(_HEAD_MODE_OWNER) + sum(_HEAD_MTIME) + 8 * ord(" ") + sum(_HEAD_TAIL)
_MAX_OCTAL_SIZE = 8**11


def member_header(name: str, size: int) -> bytes:
    """The header block(s) of a regular file member: what ``tarfile`` writes for the same TarInfo."""
    raw = name.encode("utf-8")
    if len(raw) > 100 or size >= _MAX_OCTAL_SIZE:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o444, 0, 0, "", ""
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    size_field = _octal(size, 12)
    checksum = _FIXED_SUM + sum(raw) + sum(size_field)  # the checksum field counts as eight spaces
    return b"".join((raw.ljust(100, b"\x00"), _HEAD_MODE_OWNER, size_field, _HEAD_MTIME,
                     b"%06o\x00 " % checksum, _HEAD_TAIL))


def archive_end(offset: int) -> bytes:
    """End-of-archive blocks plus padding to a whole record, as ``tarfile`` and GNU tar write them."""
    end = 2 * BLOCK
    return bytes(end + (-(offset + end) % RECORD))
