"""Many short strings in two arrays (UTF-8 bytes and end offsets) instead of one Python object each.

A scan holds every key, caption and status of the corpus for its whole run. As a list, a 12-character key
costs about 72 bytes (the ``str`` object, its pointer and allocator rounding) and a short caption about 90:
at a million rows that is 0.2 GiB the driver carries through every detector, and the part of its memory
that grows with the corpus. Packed, a string costs its UTF-8 bytes and a 4-byte offset. The store already
writes strings this way (``filters/store.py``), so a shard's strings are taken as read, never expanded.

``PackedStrings`` is a read-only ``Sequence[str]``: indexing decodes one string, a slice gives a list, and
iteration decodes in blocks, so code written for a list of keys or captions reads it unchanged. Offsets
from a file are checked once, when the sequence is built: every string is then valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

_ITER_BLOCK = 65_536  # strings decoded per step of iteration (bounds the temporary offset lists)
_MAX_INT32 = np.iinfo(np.int32).max


def _offsets(ends: np.ndarray, size: int) -> np.ndarray:
    """End offsets in the narrowest type that holds ``size`` (half the memory below 2 GiB of text)."""
    return ends.astype(np.int32 if size <= _MAX_INT32 else np.int64, copy=False)


def _check(data: bytes, ends: np.ndarray) -> None:
    """Refuse offsets that run backwards or past the data, or split a character: every slice then decodes."""
    if ends.ndim != 1 or (len(ends) and not np.issubdtype(ends.dtype, np.integer)):
        raise ValueError("string offsets must be a 1-d integer array")
    if len(ends) == 0:
        if data:
            raise ValueError(f"{len(data)} bytes of strings but no offsets")
        return
    if int(ends[0]) < 0 or bool(np.any(ends[1:] < ends[:-1])) or int(ends[-1]) != len(data):  # no diff: unsigned wraps
        raise ValueError(f"string offsets are not ascending from 0 to the {len(data)} bytes of data")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"strings are not UTF-8 (byte {exc.start})") from None
    inner = ends[ends < len(data)]
    if len(inner) and bool(np.any(np.frombuffer(data, np.uint8)[inner] & 0xC0 == 0x80)):
        raise ValueError("a string offset falls inside a UTF-8 character")


class PackedStrings(Sequence[str]):
    """Strings as one UTF-8 buffer and their end offsets (see the module docstring)."""

    __slots__ = ("_data", "_ends")

    def __init__(self, data: bytes, ends: np.ndarray, checked: bool = False) -> None:
        ends = np.asarray(ends)
        if not checked:
            _check(data, ends)
        self._data = bytes(data)
        self._ends = _offsets(ends, len(data))

    @classmethod
    def of(cls, values: Iterable[str]) -> PackedStrings:
        """``values`` packed (a PackedStrings is returned as it is: it never changes)."""
        if isinstance(values, PackedStrings):
            return values
        encoded = [v.encode("utf-8") for v in values]
        ends = np.cumsum([len(b) for b in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
        return cls(b"".join(encoded), ends, checked=True)

    @classmethod
    def join(cls, parts: Sequence[PackedStrings]) -> PackedStrings:
        """One sequence of every part's strings in order (each part's offsets shifted by the bytes before it)."""
        shifts = np.cumsum([0] + [len(p._data) for p in parts], dtype=np.int64)[:-1]
        ends = [p._ends.astype(np.int64) + shift for p, shift in zip(parts, shifts, strict=True)]
        return cls(b"".join(p._data for p in parts), np.concatenate(ends) if ends else np.zeros(0, np.int64),
                   checked=True)

    @property
    def nbytes(self) -> int:
        """Memory held: the UTF-8 bytes and the offsets."""
        return len(self._data) + self._ends.nbytes

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 bytes, int64 end offsets): the store's on-disk layout."""
        return np.frombuffer(self._data, np.uint8).copy(), self._ends.astype(np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def _start(self, index: int) -> int:
        return int(self._ends[index - 1]) if index else 0

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return list(self._decoded(*index.indices(len(self))))
        n = len(self)
        position = int(index) + n if int(index) < 0 else int(index)
        if not 0 <= position < n:
            raise IndexError(f"string index {index} out of range for {n} strings")
        return self._data[self._start(position):int(self._ends[position])].decode("utf-8")

    def _decoded(self, start: int, stop: int, step: int = 1) -> Iterator[str]:
        if step != 1:
            yield from (self[i] for i in range(start, stop, step))
            return
        for lo in range(start, stop, _ITER_BLOCK):
            hi = min(lo + _ITER_BLOCK, stop)
            ends = self._ends[lo:hi].tolist()
            starts = [self._start(lo), *ends[:-1]]
            yield from (self._data[s:e].decode("utf-8") for s, e in zip(starts, ends, strict=True))

    def __iter__(self) -> Iterator[str]:
        return self._decoded(0, len(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings):
            return self._data == other._data and np.array_equal(self._ends, other._ends)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which do not hash

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self[:3])
        return f"PackedStrings([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} strings)"


def first_duplicate(values: Sequence[str]) -> str | None:
    """A string that occurs twice, or None, without holding a set of every string: 64-bit hashes are sorted
    and only the strings whose hashes collide are compared."""
    hashes = np.fromiter((hash(v) for v in values), np.int64, len(values))
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    suspects = sorted({int(order[i]) for i in same} | {int(order[i + 1]) for i in same})
    seen: set[str] = set()
    for row in suspects:
        value = values[row]
        if value in seen:
            return value
        seen.add(value)
    return None
