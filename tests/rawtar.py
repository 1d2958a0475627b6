"""Tar archives from raw bytes: headers that no well-behaved writer emits, built exactly as an attacker would.

Each function returns bytes; ``raw_tar`` joins members and the end-of-archive blocks. Nothing here uses
``tarfile`` to write, so a test can build what ``tarfile`` itself would refuse to write.
"""

from __future__ import annotations

BLOCK = 512
USTAR = b"ustar\x0000"
GNU = b"ustar  \x00"


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def header(name: bytes | str, size: int, kind: bytes = b"0", *, magic: bytes = USTAR, prefix: bytes = b"",
           linkname: bytes = b"", mode: bytes = b"0000644\x00", size_field: bytes | None = None) -> bytes:
    """One 512-byte header with a correct checksum (``size_field`` overrides the encoded size: a lie)."""
    raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    block = bytearray(BLOCK)
    block[0:100] = raw[:100].ljust(100, b"\x00")
    block[100:108] = mode
    block[108:116] = b"0000000\x00"
    block[116:124] = b"0000000\x00"
    block[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    block[136:148] = b"00000000000\x00"
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:257] = linkname.ljust(100, b"\x00")
    block[257:265] = magic
    block[345:500] = prefix.ljust(155, b"\x00")
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def member(name: bytes | str, data: bytes, kind: bytes = b"0", **kw: object) -> bytes:
    """A header and its data, padded to whole blocks."""
    return header(name, len(data), kind, **kw) + _pad(data)  # type: ignore[arg-type]


def pax(records: dict[str, str] | dict[bytes, bytes], kind: bytes = b"x") -> bytes:
    """A pax extended (``x``) or global (``g``) header carrying ``records``."""
    body = b""
    for key, value in records.items():
        k = key.encode() if isinstance(key, str) else key
        v = value.encode() if isinstance(value, str) else value
        item = b" " + k + b"=" + v + b"\n"
        length = len(item) + 1
        while len(str(length).encode()) + len(item) != length:
            length += 1
        body += str(length).encode() + item
    return member("././@PaxHeader", body, kind)


def long_name(name: bytes, kind: bytes = b"L") -> bytes:
    """A GNU long-name (``L``) or long-link (``K``) record."""
    return member("././@LongLink", name + b"\x00", kind, magic=GNU)


def sample(key: str, jpg: bytes, caption: bytes, meta: bytes = b"{}") -> bytes:
    return member(f"{key}.jpg", jpg) + member(f"{key}.txt", caption) + member(f"{key}.json", meta)


def raw_tar(*parts: bytes) -> bytes:
    """Members followed by the two zero blocks and padding to a 10 KiB record, as tar writes them."""
    body = b"".join(parts) + bytes(2 * BLOCK)
    return body + bytes(-len(body) % (20 * BLOCK))
