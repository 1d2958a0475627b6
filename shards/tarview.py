"""The one view of a shard's tar that every poisonlab reader shares (the reader, ``audit_tar``, ``stats``).

A shard's tar is what the tools downstream train on: webdataset and open_clip read it with Python's
``tarfile``. So poisonlab must see exactly the members ``tarfile`` sees, or refuse the tar: members it
skipped but ``tarfile`` reads are samples no detector ever inspected (see ``tarformat``). This module
opens a tar without following links (``safe_open``), streams its members through the strict
``tarformat.iter_members`` and turns every way a tar can fail into one ``TarProblem`` with a reason:

* ``not_a_tar``: the first header is not a tar header (a zip, HTML, an empty file);
* ``truncated_or_corrupt_tar``: a bad checksum, a cut, a broken compressed stream;
* ``refused_tar``: a construct other readers interpret differently (``TarRefusedError``).

Members before the problem are the same for every reader and stay usable; for the rest of the file it
looks for the names of members that a reader resynchronising on the next header would find
(``hidden``), so that every sample of a damaged shard can still be given a row with a reason, even
when no sidecar lists it. Those members are only named, never read or handed on.
"""

from __future__ import annotations

import dataclasses
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from poisonlab.shards.safe_open import open_regular
from poisonlab.shards.tarformat import (
    BLOCK,
    TarFormatError,
    TarMember,
    TarRefusedError,
    checksum_ok,
    header_name,
    iter_members,
    open_stream,
)

MAX_HIDDEN_NAMES = 100_000  # names recovered past a problem: enough for any shard, bounded for a hostile one
_SCAN_CHUNK = 1 << 20  # a multiple of the block size
_READ_ERRORS = (TarFormatError, OSError, EOFError, zlib.error, lzma.LZMAError)
_REGULAR = (b"0", b"\x00", b"7")
_FOREIGN_MAGIC = ((b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "an empty zip archive"),
                  (b"\x28\xb5\x2f\xfd", "a zstd stream"), (b"<", "text or HTML"))


@dataclasses.dataclass
class TarProblem:
    """Why a tar could not be read to its end; ``member`` is the member whose data was cut, if any."""

    kind: str
    message: str
    member: str | None = None
    hidden: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def _foreign(path: Path) -> str | None:
    try:
        with open_regular(path) as fh:
            head = fh.read(8)
    except OSError:
        return None
    if not head:
        return "an empty file"
    return next((what for magic, what in _FOREIGN_MAGIC if head.startswith(magic)), None)


def _problem(path: Path, exc: BaseException) -> TarProblem:
    if isinstance(exc, TarRefusedError):
        return TarProblem("refused_tar", str(exc), exc.member)
    what = _foreign(path)
    if what is not None:
        return TarProblem("not_a_tar", f"{what}, not a tar archive")
    message = str(exc) if isinstance(exc, TarFormatError) else f"{type(exc).__name__}: {exc}"
    if message.endswith("(not a tar archive)"):
        return TarProblem("not_a_tar", message)
    return TarProblem("truncated_or_corrupt_tar", message, getattr(exc, "member", None))


def scan_hidden_names(stream: BinaryIO) -> list[str]:
    """Names of the regular-file headers (ustar magic, valid checksum) in the rest of a stream, best effort.

    A reader that resynchronises on the next valid header (``tar -i``, ``tarfile(ignore_zeros=True)``,
    or simply one that trusted a lying size) would find these members. Only names are taken.
    """
    names: list[str] = []
    try:
        pos = stream.tell()
        if pos % BLOCK:
            stream.read(BLOCK - pos % BLOCK)
        while len(names) < MAX_HIDDEN_NAMES and (chunk := stream.read(_SCAN_CHUNK)):
            i = chunk.find(b"ustar")
            while i != -1 and len(names) < MAX_HIDDEN_NAMES:
                start = i - 257
                if start >= 0 and start % BLOCK == 0 and start + BLOCK <= len(chunk):
                    block = chunk[start : start + BLOCK]
                    if block[156:157] in _REGULAR and checksum_ok(block):
                        names.append(header_name(block).decode("utf-8", "surrogateescape"))
                i = chunk.find(b"ustar", i + 1)
    except _READ_ERRORS:
        pass  # the stream itself is broken past this point: nothing more can be named
    return names


def iter_tar(path: Path, want: Callable[[str, str, int], bool], problems: list[TarProblem]) -> Iterator[TarMember]:
    """The members of a shard's tar as every tar reader sees them; a problem ends the stream, recorded.

    Never raises for a bad tar: the problem (with the names hidden past it) is appended to ``problems``.
    """
    try:
        with open_regular(path) as raw, open_stream(raw) as stream:
            try:
                yield from iter_members(stream, want)
            except _READ_ERRORS as exc:
                problem = _problem(path, exc)
                if problem.kind != "not_a_tar":
                    problem.hidden = scan_hidden_names(stream)
                problems.append(problem)
    except OSError as exc:  # opening: a link, a FIFO, a device, a missing or unreadable file
        problems.append(TarProblem("unreadable_tar", exc.strerror or str(exc)))


def member_names(path: Path) -> tuple[list[TarMember], list[TarProblem]]:
    """Every member header (no data) and the problems: what ``audit_tar`` and ``stats`` look at."""
    problems: list[TarProblem] = []
    members = list(iter_tar(path, lambda name, kind, size: False, problems))
    return members, problems
