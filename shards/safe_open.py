"""Opening input files without following links: every read of a stranger's folder goes through here.

A shard folder or an image folder comes from someone else, and a name in it may be a symbolic link to
``/etc/passwd``, a FIFO that blocks the reader forever, or a device. Checking with ``stat`` first and
opening afterwards leaves a window in which the name can be swapped, so the checks are made on the
open descriptor instead: ``O_NOFOLLOW`` refuses a link as the last component, ``O_NONBLOCK`` keeps a
FIFO from blocking the ``open`` itself, and ``fstat`` on the descriptor must say "regular file".
``open_inside`` also walks the directories of a relative path one ``openat`` at a time with
``O_NOFOLLOW``, so no component of the path can lead out of the folder either.

Hard links: a regular file with more than one link may have its other names outside the folder (a
link to a file the folder's owner may read but the importer should not publish). ``open_inside``
refuses such a file unless the caller names its inode as one whose links are all inside the folder
(``allowed_inodes``, from a scan of the folder: see ``folder_scan``). Shard files (``open_regular``)
may be hard links: shard folders are often hard-linked snapshots, and a shard's bytes are parsed as a
tar and a sidecar, never published as they are; links, FIFOs and devices are refused all the same.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = _FLAGS | os.O_DIRECTORY
_BUFFER = 1 << 20


class UnsafeFileError(OSError):
    """An input that is not a plain regular file inside its folder; the message is the recorded reason."""


def describe_mode(mode: int) -> str:
    """What a file is, for reasons: "a symbolic link", "a FIFO", ..."""
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _open_fd(name: str | Path, dir_fd: int | None, flags: int) -> int:
    """``os.open``; a refused link says so by base name (reasons never hold run-dependent paths)."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (getattr(os, "ELOOP", 40), getattr(os, "EMLINK", 31)):  # O_NOFOLLOW on a link
            raise UnsafeFileError(exc.errno, f"{Path(name).name} is a symbolic link (not followed)") from None
        if exc.errno == getattr(os, "ENOTDIR", 20) and flags & os.O_DIRECTORY:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            what = ("a symbolic link (not followed)" if stat.S_ISLNK(st.st_mode)
                    else "not a directory" if stat.S_ISREG(st.st_mode) else describe_mode(st.st_mode))
            raise UnsafeFileError(exc.errno, f"{Path(name).name} is {what}") from None
        raise


def _checked(fd: int, name: str | Path, allowed_inodes: Collection[tuple[int, int]] | None) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafeFileError(0, f"{name} is {describe_mode(st.st_mode)}")
    if allowed_inodes is not None and st.st_nlink > 1 and (st.st_dev, st.st_ino) not in allowed_inodes:
        os.close(fd)
        raise UnsafeFileError(0, f"{name} is a hard link with {st.st_nlink} names, some outside the folder")
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for reading, refusing links, FIFOs and devices (``UnsafeFileError``)."""
    fd = _open_fd(path, None, _FLAGS)
    _checked(fd, Path(path).name, None)
    return os.fdopen(fd, "rb", buffering=_BUFFER)


def open_inside(root: str | Path, relative: str, allowed_inodes: Collection[tuple[int, int]] = ()) -> BinaryIO:
    """Open ``root/relative`` for reading without following any link in ``relative``'s components.

    ``relative`` is a POSIX path inside ``root`` (no ``..``, not absolute). Regular files with several
    hard links are refused unless their (device, inode) is in ``allowed_inodes``.
    """
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise UnsafeFileError(0, f"{relative} is not a path inside the folder")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            next_fd = _open_fd(part, fd, _DIR_FLAGS)
            os.close(fd)
            fd = next_fd
        file_fd = _open_fd(parts[-1], fd, _FLAGS)
    finally:
        os.close(fd)
    _checked(file_fd, relative, allowed_inodes)
    return os.fdopen(file_fd, "rb", buffering=_BUFFER)


def read_capped(fh: BinaryIO, limit: int, name: str) -> bytes:
    """All of a file, or ``UnsafeFileError`` when it holds more than ``limit`` bytes (never reads more)."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFileError(0, f"{name} is larger than {limit} bytes")
    return data
