"""File names of a shard set: ``{shard:05d}.tar`` + ``.parquet`` sidecar + ``_stats.json``, and ``sizes.json``.

This is img2dataset's output layout, so its folders read unchanged and ours train unchanged with
``open_clip_train --train-data 'DIR/{00000..000NN}.tar'``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SHARD_RE = re.compile(r"^(\d{5,})\.tar$")


def shard_name(index: int) -> str:
    return f"{index:05d}"


def tar_path(directory: Path, shard: str) -> Path:
    return Path(directory) / f"{shard}.tar"


def sidecar_path(directory: Path, shard: str) -> Path:
    return Path(directory) / f"{shard}.parquet"


def stats_path(directory: Path, shard: str) -> Path:
    return Path(directory) / f"{shard}_stats.json"


def list_shards(directory: Path) -> list[str]:
    """Shard names (without extension) of the tars in ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"shard folder {directory} does not exist")
    return sorted(m.group(1) for p in directory.iterdir() if (m := SHARD_RE.match(p.name)))


# Run-level tables (a poison manifest, an exclusion table) live in this subfolder, so that a glob over a
# shard folder's ``*.parquet`` (DuckDB's ``'DIR/*.parquet'``) matches only per-shard sidecars, which share
# one schema. Folders written before this rule keep them beside the shards; readers fall back to that.
RUN_DIR = "_run"


def run_file(directory: Path, name: str) -> Path:
    """Where a run-level table is written: ``DIR/_run/NAME``."""
    return Path(directory) / RUN_DIR / name


def find_run_file(directory: Path, name: str) -> Path:
    """Where a run-level table is read: ``DIR/_run/NAME``, else the older ``DIR/NAME`` if only that exists."""
    new, legacy = run_file(directory, name), Path(directory) / name
    return legacy if not new.exists() and legacy.exists() else new


def list_sidecars(directory: Path) -> list[str]:
    directory = Path(directory)
    return sorted(p.stem for p in directory.glob("*.parquet") if p.stem.isdigit())


def brace_pattern(directory: Path, shards: list[str]) -> str:
    """The ``{00000..000NN}.tar`` pattern that open_clip and webdataset expand."""
    if not shards:
        raise ValueError(f"no shards in {directory}")
    return str(Path(directory) / f"{{{shards[0]}..{shards[-1]}}}.tar") if len(shards) > 1 else str(
        tar_path(directory, shards[0])
    )


def _is_regular_file(path: Path) -> bool:
    """A regular file under this very name (``lstat``: a link to one elsewhere does not count)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_complete(directory: Path, shard: str) -> bool:
    """A shard is complete when its stats file exists: it is renamed into place last. Links, FIFOs and
    devices under these names are not a completed shard (a rerun rewrites it instead of trusting them)."""
    return all(_is_regular_file(p) for p in (stats_path(directory, shard), tar_path(directory, shard),
                                             sidecar_path(directory, shard)))


def temp_files(directory: Path) -> list[Path]:
    """Files a writer has not renamed into place yet (or never will: it was killed)."""
    return sorted(Path(directory).glob(".*.tmp"))


def remove_temp_files(directory: Path) -> int:
    """Clean up after killed writers; call only when no writer is running on ``directory``."""
    paths = temp_files(directory)
    for path in paths:
        path.unlink(missing_ok=True)
    return len(paths)


def unique_temp_path(path: Path) -> Path:
    """A hidden sibling name no other writer (another process, a retried task) can collide on."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a unique temporary path to write to (by any library); renamed onto ``path`` on success.

    On any error the temporary file is removed and ``path`` is untouched: readers see the old file or the
    new one, never half of one.
    """
    path = Path(path)
    tmp = unique_temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write under a unique temporary name, then rename: readers see the old file or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_sizes(directory: Path, live_counts: Iterable[tuple[str, int]]) -> Path:
    """``sizes.json`` maps tar file names to sample counts, as open_clip's ``get_dataset_size`` reads it."""
    sizes = {f"{shard}.tar": int(n) for shard, n in sorted(live_counts)}
    path = Path(directory) / "sizes.json"
    atomic_write_json(path, sizes)
    return path
