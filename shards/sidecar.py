"""The parquet sidecar of a shard: one row per sample the writer received, live or not.

A fixed schema for the columns every shard has (so all sidecars of a dataset read as one table with
pyarrow or DuckDB), plus the source's metadata as extra columns (img2dataset's ``url``, our ``class``
and ``label``), within limits: a hostile ``.json`` with thousands of keys must not become thousands
of columns. Rows are packed into Arrow batches every ``CHUNK_ROWS`` rows, so a large shard costs a few
hundred bytes per sample in memory, not a Python object per field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

SIDECAR_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("caption", pa.string()),
    ("payload_ext", pa.string()),
    ("bytes", pa.int64()),
    ("sha256", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("touched_by", pa.string()),
    ("provenance", pa.string()),
])
SIDECAR_COLUMNS = tuple(SIDECAR_SCHEMA.names)
MAX_EXTRA_COLUMNS = 64
CHUNK_ROWS = 1024
# Meta keys with columns of their own (provenance) or in the base schema (width, height).
RESERVED_META = frozenset({"width", "height", "poisonlab"})
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_BASE = frozenset(SIDECAR_COLUMNS)


def printable(text: str) -> str:
    """Text that can be stored anywhere (JSON escapes and tar names can smuggle in lone surrogates)."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _scalar(value: Any) -> Any:
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return printable(value)
    return printable(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False))


def _infer(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # mixed types: keep them as text
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


class SidecarBuilder:
    """Collects rows (tuples in ``SIDECAR_COLUMNS`` order) and the metadata of each sample."""

    def __init__(self) -> None:
        self.rows = 0
        self._pending: list[tuple[Any, ...]] = []
        self._metas: list[Mapping[str, Any]] = []
        self._batches: list[tuple[int, dict[str, pa.Array]]] = []
        self._extra: dict[str, None] = {}  # extra column names in order of appearance (capped)

    def append(self, row: tuple[Any, ...], meta: Mapping[str, Any]) -> None:
        self._pending.append(row)
        self._metas.append(meta)
        self.rows += 1
        if len(self._pending) >= CHUNK_ROWS:
            self._pack()

    def _extra_name(self, key: str) -> str | None:
        name = f"meta_{key}" if key in _BASE else key
        if name in self._extra:
            return name
        if len(self._extra) >= MAX_EXTRA_COLUMNS or not _COLUMN_NAME.match(name):
            return None
        self._extra[name] = None
        return name

    def _pack(self) -> None:
        if not self._pending:
            return
        n = len(self._pending)
        columns = {f.name: pa.array(list(values), type=f.type)
                   for f, values in zip(SIDECAR_SCHEMA, zip(*self._pending, strict=True), strict=True)}
        extras: dict[str, list[Any]] = {}
        for i, meta in enumerate(self._metas):
            for key, value in meta.items():
                if value is None or key in RESERVED_META:
                    continue
                name = self._extra_name(key)
                if name is None:
                    continue
                column = extras.get(name)
                if column is None:
                    column = extras[name] = [None] * n
                if column[i] is None:
                    column[i] = _scalar(value)
        columns.update((name, _infer(values)) for name, values in extras.items())
        self._batches.append((n, columns))
        self._pending, self._metas = [], []

    def table(self) -> pa.Table:
        self._pack()
        fields = list(SIDECAR_SCHEMA)
        arrays = [pa.chunked_array([cols[f.name] for _, cols in self._batches], type=f.type) for f in fields]
        for name in sorted(self._extra):
            parts = [cols.get(name) for _, cols in self._batches]
            types = {p.type for p in parts if p is not None and p.type != pa.null()}
            kind = types.pop() if len(types) == 1 else pa.string()  # batches that disagree: text
            chunks = [pa.nulls(n, kind) if p is None else p.cast(kind)
                      for (n, _), p in zip(self._batches, parts, strict=True)]
            arrays.append(pa.chunked_array(chunks, type=kind))
            fields.append(pa.field(name, kind))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
