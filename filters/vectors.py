"""Where an index shard reads vectors from: rows by range (building, query blocks) and by id (refinement).

An index shard never needs every vector at once: it reads its own row range to build its codes, one query
block at a time to search, and the few candidates of a block to re-rank them exactly. ``ArraySource``
serves an array already in memory (no copy); ``NpySource`` serves a ``.npy`` file through a memory map, so
each Dask worker reads only the pages it touches and the handle it is sent is a path, not the data.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any, Protocol

import numpy as np

GATHER_SPAN = 16 * 2**20  # bytes of a memory-mapped file a gather may map before its pages are released


class VectorSource(Protocol):
    """Row-addressable float32 vectors."""

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def rows(self, start: int, end: int) -> np.ndarray:
        """Rows start..end-1 as a C-contiguous float32 array."""
        ...

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The rows with these ids (any shape), stacked: ``ids.shape + (dim,)``."""
        ...

    def array(self) -> np.ndarray:
        """All rows as one C-contiguous float32 array (in memory or memory-mapped: never a copy), for
        FAISS routines that read candidates in place."""
        ...

    def release(self) -> None:
        """Drop what was read so far from this process's resident memory (memory maps; else nothing)."""
        ...


class _RowsOfX:
    """Length, width and row ranges of a source whose vectors are ``self.x`` (an array or a memory map)."""

    x: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    def rows(self, start: int, end: int) -> np.ndarray:
        return np.ascontiguousarray(self.x[start:end], dtype=np.float32)


class ArraySource(_RowsOfX):
    """An in-memory (n, d) array; reading never copies more than the rows asked for."""

    def __init__(self, x: np.ndarray) -> None:
        if x.ndim != 2:
            raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)  # no copy when it already is

    def take(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.x[ids], dtype=np.float32)

    def array(self) -> np.ndarray:
        return self.x

    def release(self) -> None:
        """An array in memory stays there."""


class NpySource(_RowsOfX):
    """A ``.npy`` file of (n, d) vectors, memory-mapped on first use (pickles as its path)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()
        self._x: np.ndarray | None = None

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"vector file {self.path} is not visible here (give a folder every worker sees)")
            self._x = np.load(self.path, mmap_mode="r")
        return self._x

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_x": None}

    def take(self, ids: np.ndarray) -> np.ndarray:
        return take_rows(self.x, ids.reshape(-1)).reshape(*ids.shape, self.dim)

    def array(self) -> np.ndarray:
        if self.x.dtype != np.float32 or not self.x.flags["C_CONTIGUOUS"]:
            raise ValueError(f"{self.path} must hold C-ordered float32 vectors")
        return self.x

    def release(self) -> None:
        """Unmap the pages touched so far (see ``release_pages``)."""
        if self._x is not None:
            release_pages(self._x)


def take_rows(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]`` as a float32 array of its own. From a memory map the rows are read in ascending order and
    the pages released whenever the rows read so far span ``GATHER_SPAN`` bytes of the file: a fault maps
    more than its own page (fault-around, and whole large folios of the page cache: about 0.6 MiB a
    fault was measured here), so a few hundred scattered rows read in one go map most of the file."""
    if _mapping(x) is None:
        return np.asarray(x[rows], dtype=np.float32)
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    ascending = rows[order]
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize)
    window = ascending // max(1, GATHER_SPAN // row_bytes)
    cuts = np.flatnonzero(np.diff(window)) + 1
    out = np.empty((len(order), *x.shape[1:]), np.float32)
    for part in np.split(order, cuts):
        out[part] = x[rows[part]]
        release_pages(x)
    return out


def _mapping(x: object) -> mmap.mmap | None:
    """The file mapping behind an array (or any view of one), if there is one."""
    while x is not None:
        if isinstance(x, mmap.mmap):
            return x
        x = getattr(x, "base", None)
    return None


def release_pages(x: np.ndarray) -> None:
    """Unmap the pages of the file mapping behind ``x`` (a memory-mapped array, or any view of one) that this
    process has touched. The page cache keeps them and the next read maps them again, so a loop that reads a
    memory-mapped store block by block does not end up with the whole file in its resident memory. An
    array in memory is left alone."""
    mapped = _mapping(x)
    if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def save_source(x: np.ndarray, path: Path) -> NpySource:
    """Write vectors to ``path`` (a ``.npy``) for workers to memory-map."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(x, dtype=np.float32))
    return NpySource(path)
