"""What is in a local input folder, without following anything out of it (``import``, ``splitview``).

Every entry is looked at with ``lstat``: symbolic links (to files or directories), FIFOs, devices and
sockets are never followed or opened, and those that would have been inputs (an image name, or a
directory) are listed in ``unsafe`` with a reason, so the caller can give each a row. Hidden entries
(names starting with ".") are not inputs and are skipped, as before.

Hard links: a regular file with several links is an input only when all its links are inside the
folder (counted during the scan: ``shared_inodes``); otherwise one of its names may be a file outside
the folder that the importer can read and should not publish. The reads themselves go through
``safe_open.open_inside``, which checks the same things again on the open descriptor.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections import Counter
from pathlib import Path

from poisonlab.shards.images import IMAGE_EXTENSIONS
from poisonlab.shards.safe_open import describe_mode


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """The non-hidden entries of a folder by relative POSIX path (``lstat`` results), and why some are unsafe."""

    root: Path
    entries: dict[str, os.stat_result]
    unsafe: dict[str, str]
    shared_inodes: frozenset[tuple[int, int]]
    readable_images: frozenset[str]  # regular files with an image extension that may be read

    def images(self) -> list[str]:
        """The readable images, sorted."""
        return sorted(self.readable_images)

    def is_regular(self, rel: str) -> bool:
        st = self.entries.get(rel)
        return st is not None and stat.S_ISREG(st.st_mode)


def _is_image(rel: str) -> bool:
    return rel.rpartition(".")[2].lower() in IMAGE_EXTENSIONS and "." in rel.rpartition("/")[2]


def _why_unsafe(st: os.stat_result, shared: frozenset[tuple[int, int]]) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"{describe_mode(st.st_mode)} (not followed)"
    if st.st_nlink > 1 and (st.st_dev, st.st_ino) not in shared:
        return f"a hard link with {st.st_nlink} names, some outside the folder"
    return None


def scan_folder(root: Path) -> FolderScan:
    """Walk ``root`` without following links; list the entries and the would-be inputs that are unsafe."""
    root = Path(root)
    entries: dict[str, os.stat_result] = {}
    unsafe: dict[str, str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            if os.path.islink(base / name):
                unsafe[(base / name).relative_to(root).as_posix()] = "a symbolic link to a directory (not followed)"
            else:
                kept.append(name)
        dirs[:] = kept
        for name in files:
            if not name.startswith("."):
                entries[(base / name).relative_to(root).as_posix()] = os.lstat(base / name)
    links = Counter((st.st_dev, st.st_ino) for st in entries.values() if stat.S_ISREG(st.st_mode) and st.st_nlink > 1)
    nlink = {(st.st_dev, st.st_ino): st.st_nlink for st in entries.values()}
    shared = frozenset(inode for inode, count in links.items() if count >= nlink[inode])
    for rel, st in entries.items():
        why = _why_unsafe(st, shared)
        if why is not None and _is_image(rel):
            unsafe[rel] = why
    readable = frozenset(rel for rel, st in entries.items()
                         if _is_image(rel) and stat.S_ISREG(st.st_mode) and rel not in unsafe)
    return FolderScan(root, entries, unsafe, shared, readable)
