"""The tar format, as much of it as shards need: stream members in, write deterministic members out.

Why not ``tarfile`` alone: its per-member cost (header objects, member lists that grow with the
archive) is several times that of everything else a shard read or write does, and in streaming mode
it takes a tar cut between two members, or a corrupt header in the middle, for a normal end.

Why the reader must still agree with ``tarfile`` member for member: webdataset and open_clip's trainer
read shards with ``tarfile``, so a member that ``tarfile`` sees and poisonlab does not is a member no
detector ever inspected. ``iter_members`` therefore follows ``tarfile``'s rules where both can read a
header (the ustar prefix whatever the magic, a ``"\\0"``-typed name ending in ``/`` is a directory,
the first of two name records wins, a pax ``path`` loses its trailing slashes) and refuses, with
``TarRefusedError``, every construct on which the two could disagree: a directory, link or device
entry with data (``tarfile`` reads that data as further headers), GNU sparse files and pax
``GNU.sparse.*`` records (``GNU.sparse.name`` renames the member), pax global headers (a global
``path`` renames every later member), Solaris ``X`` headers, ``hdrcharset``, two name records for one
member, numbers ``tarfile`` cannot parse, and anything but zeros after the end-of-archive block
(readers with ``ignore_zeros`` would go on). It also checks every header checksum, requires the
end-of-archive block, never reads the data of a member its caller does not want, and caps long-name
(``MAX_NAME_BYTES``) and pax (``MAX_RECORD_BYTES``) records.

Writing emits exactly the bytes ``tarfile`` writes for a GNU-format regular file with mtime 0, mode
0444 and no owner (``tarfile`` itself still writes names longer than 100 bytes), so any tar tool reads
the output: a tar poisonlab writes holds regular files only, never a construct refused above.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import tarfile
from collections.abc import Callable, Iterator
from typing import BinaryIO, NamedTuple
from zlib import adler32

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
ZERO_BLOCK = bytes(BLOCK)
MAX_RECORD_BYTES = 1024 * 1024  # a pax header longer than this is an attack, not metadata
MAX_NAME_BYTES = 4096  # PATH_MAX: a longer GNU long-name or long-link record is an attack, not a name
_GNU_MAGIC = b"ustar  \x00"
_FILE_TYPES = frozenset({b"0", b"\x00", b"7"})
_AREGTYPE, _DIR_TYPE = b"\x00", b"5"
# Types tarfile knows that are not regular files: it reads no data after their header, whatever the size.
_DATALESS_TYPES = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
_LONGNAME, _LONGLINK, _PAX = b"L", b"K", b"x"
_REFUSED_TYPES = {
    b"S": "GNU sparse member",
    b"g": "pax global header (it would rename or resize every later member)",
    b"X": "Solaris extended header",
}
_REFUSED_PAX = (b"GNU.sparse.", b"hdrcharset")  # tarfile renames/resizes by these, or re-decodes names
_SPECIAL_TYPES = frozenset({_LONGNAME, _LONGLINK, _PAX, *_REFUSED_TYPES})
_OCTAL_FIELD = re.compile(rb" *[0-7]* *(?:\x00[\x00-\xff]*)?")
# mode, uid, gid, mtime, devmajor, devminor: tarfile stops at a header where one is not a number
_NUMBER_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))
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


class TarRefusedError(TarFormatError):
    """A construct other tar readers (``tarfile``, hence webdataset) would read differently: refused."""


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
    try:  # exactly tarfile's nti(): up to the first NUL, ASCII, surrounding whitespace stripped, octal
        value = int(field.split(b"\x00", 1)[0].decode("ascii").strip() or "0", 8)
    except ValueError:
        raise TarFormatError(f"invalid number {field[:16]!r} in the header at byte {where}") from None
    if value < 0:
        raise TarFormatError(f"negative number in the header at byte {where}")
    return value


def _check_numbers(head: bytes, where: int) -> None:
    """tarfile parses every number field and stops at a header where one fails: so must we."""
    for start, end in _NUMBER_FIELDS:
        if head[start] not in (0x80, 0xFF) and not _OCTAL_FIELD.fullmatch(head, start, end):
            try:
                _number(head[start:end], where)
            except TarFormatError as exc:
                raise TarRefusedError(f"{exc} (tarfile stops reading there)") from None


def _byte_sum(block: bytes) -> int:
    """Sum of the bytes of a 512-byte block, in C: Adler-32's low half is 1 + the byte sum modulo 65521,
    and a 256-byte half sums to at most 65280, so each half's sum comes out exact."""
    return (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2


def checksum_ok(block: bytes) -> bool:
    """Whether a 512-byte block is a tar header by its checksum (unsigned, or signed as some old tars)."""
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


def header_name(block: bytes) -> bytes:
    """The name a header gives its member, as tarfile builds it: the ustar prefix joins whatever the magic."""
    name = block[:100].split(b"\x00", 1)[0]
    if block[345] and block[156:157] not in (_LONGNAME, _LONGLINK, b"S"):
        name = block[345:500].split(b"\x00", 1)[0] + b"/" + name
    return name


def _pax_records(data: bytes, where: int) -> dict[bytes, bytes]:
    """The records of a pax header, parsed strictly: anything ``tarfile`` would parse differently raises."""
    for refused in _REFUSED_PAX:
        if refused in data:
            raise TarRefusedError(f"pax record {refused.decode()}* at byte {where}")
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        digits = data[pos:space]
        length = int(digits) if space > pos and digits.isdigit() else 0
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or not record.find(b"=") > 0:
            raise TarFormatError(f"invalid pax record at byte {where}")
        key, _, value = record[:-1].partition(b"=")
        records[key] = value
        pos += length
    return records


def _skip(fh: BinaryIO, n: int, where: int, name: str | None = None) -> None:
    """Skip ``n`` bytes of member data, by seeking where the stream can (checking the data is there)."""
    if n <= 0:
        return
    if fh.seekable():
        fh.seek(n - 1, 1)
        if fh.read(1):
            return
        raise TarFormatError(f"unexpected end of data in the member at byte {where}", name)
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


def _header(head: bytes, where: int, checked: set[bytes]) -> int:
    """Validate a header block as tarfile would (checksum, number fields) and return its size field."""
    if not checksum_ok(head):
        raise TarFormatError(f"bad header checksum at byte {where}" + (" (not a tar archive)" if where == 0 else ""))
    fields = head[100:124] + head[136:148] + head[329:345]  # mode, uid, gid, mtime, devices: often all alike
    if fields not in checked:
        _check_numbers(head, where)
        if len(checked) < 256:
            checked.add(fields)
    try:
        size = int(head[124:135], 8) if head[135] == 0 else _number(head[124:136], where)
    except ValueError:
        size = _number(head[124:136], where)
    if size < 0:
        raise TarFormatError(f"negative size in the header at byte {where}")
    return size


def _check_end(fh: BinaryIO, where: int) -> None:
    """After the first zero block only zeros may follow (``ignore_zeros`` readers would read on)."""
    while chunk := fh.read(1 << 16):
        if chunk.count(0) != len(chunk):
            if fh.seekable():  # back to the data, so that a caller can name the members it holds
                fh.seek(-len(chunk), 1)
            raise TarRefusedError(f"data after the end-of-archive block at byte {where}")


class _Extended:
    """The long-name, long-link and pax records read for the next member (one of each at most)."""

    __slots__ = ("name", "link", "pax")

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.link: bytes | None = None
        self.pax: dict[bytes, bytes] | None = None

    def add(self, flag: bytes, data: bytes, where: int) -> None:
        slot = "name" if flag == _LONGNAME else "link" if flag == _LONGLINK else "pax"
        if getattr(self, slot) is not None:  # tarfile lets the first one win, a naive reader the last
            raise TarRefusedError(f"a second {slot} record for one member at byte {where}")
        setattr(self, slot, data.split(b"\x00", 1)[0] if slot != "pax" else _pax_records(data, where))

    def member(self, head: bytes, size: int, where: int) -> tuple[bytes, int]:
        """The member's raw name and size, with these records applied as tarfile applies them."""
        pax = self.pax or {}
        if b"path" in pax:
            if self.name is not None:
                raise TarRefusedError(f"both a long-name record and a pax path at byte {where}")
            raw = pax[b"path"].rstrip(b"/")
        else:
            raw = self.name if self.name is not None else header_name(head)
        if b"size" in pax:
            value = pax[b"size"]
            if not (value.isdigit() and len(value) <= 18):
                raise TarFormatError(f"invalid pax size at byte {where}")
            size = int(value)
        return raw, size


_KINDS = {b"0": "file", b"7": "file", b"\x00": "file", _DIR_TYPE: "dir"}


def _aregtype_kind(head: bytes) -> str:
    """tarfile: an old-style "\\0" entry whose name ends in "/" is a directory, not a file."""
    return "dir" if head[:100].split(b"\x00", 1)[0].endswith(b"/") else "file"


def iter_members(fh: BinaryIO, want: Callable[[str, str, int], bool]) -> Iterator[TarMember]:
    """Stream the members of an uncompressed tar; ``want(name, kind, size)`` decides whether data is read.

    Names are decoded as UTF-8 with surrogate escapes (as ``tarfile`` does), so callers can refuse
    names that are not valid UTF-8. Raises ``TarFormatError`` at the first sign of damage and
    ``TarRefusedError`` at the first construct that other tar readers would read differently.
    """
    read = fh.read
    offset = 0
    extended: _Extended | None = None
    checked: set[bytes] = set()
    while True:
        where = offset
        head = read(BLOCK)
        if len(head) != BLOCK or head == ZERO_BLOCK:
            if not head:
                raise TarFormatError(f"no end-of-archive marker: the tar ends at byte {where} after a member")
            if len(head) != BLOCK:
                raise TarFormatError(f"truncated header at byte {where}")
            if extended is not None:
                raise TarRefusedError(f"an extended header with no member after it at byte {where}")
            _check_end(fh, where)
            return
        size = _header(head, where, checked)
        flag = head[156:157]
        offset += BLOCK
        if flag in _SPECIAL_TYPES:
            if flag in _REFUSED_TYPES:
                raise TarRefusedError(f"{_REFUSED_TYPES[flag]} at byte {where}")
            if size > (MAX_RECORD_BYTES if flag == _PAX else MAX_NAME_BYTES):
                raise TarRefusedError(f"oversized extended header ({size} bytes) at byte {where}")
            padded = size + (-size % BLOCK)
            extended = extended or _Extended()
            extended.add(flag, _read_exact(fh, padded, where)[:size], where)
            offset += padded
            continue
        raw_name, size = extended.member(head, size, where) if extended is not None else (header_name(head), size)
        extended = None
        name = raw_name.decode("utf-8", "surrogateescape")
        kind = _KINDS.get(flag, "other") if flag != _AREGTYPE else _aregtype_kind(head)
        if kind == "dir":
            name = name.rstrip("/")  # as tarfile names directories
        if size and kind != "file" and (kind == "dir" or flag in _DATALESS_TYPES):
            raise TarRefusedError(f"{kind} entry {name!r} with {size} bytes of data at byte {where} "
                                  "(tarfile reads them as further headers)")
        padded = size + (-size % BLOCK)
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
