"""Graph payloads (``KEY.npz``): a safe decoder with caps, and a deterministic encoder.

A graph sample's payload is an uncompressed or deflated ``.npz``: ``edge_index`` (int64, 2 x E, node ids
in ``0..N-1``), ``x`` (float32, N x F node features) and optional numeric arrays: per-node ones are named
``node_*`` (first dimension N, so a trigger that adds nodes extends them), any other is graph-level (such
as the label ``y``). It comes from strangers, so it is read the way images are:

* never unpickled: every array header is parsed before its data (``np.lib.format``), an object dtype is
  refused with a reason, and ``np.load`` is only ever called with ``allow_pickle=False``;
* caps on nodes, edges, feature values and the number of arrays are checked from the headers, before any
  data is decompressed, so a "graph bomb" (a tiny zip claiming a billion edges) is an error with a reason,
  never an out-of-memory crash;
* dtypes, shapes and the edge range are validated, so a trigger or an encoder never indexes out of range.

The encoder writes a zip with fixed timestamps and sorted members (``np.savez`` stamps the current time),
so the same arrays always give the same bytes on any worker. Error messages are the recorded reasons.
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.lib import format as npformat

GRAPH_EXTENSIONS = frozenset({"npz"})
REQUIRED_ARRAYS = ("edge_index", "x")
NODE_PREFIX = "node_"  # optional arrays with one row per node
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_MAX_HEADER = 4096
_EAGER_BYTES = 1 << 20  # members up to this size are read with their header (at most 16 MiB a graph)
_EOCD = b"PK\x05\x06"  # the zip's end-of-central-directory record: 22 bytes plus a comment of at most 64 KiB
_MAX_DIRECTORY_ENTRY = 46 + 256  # a central-directory entry with a name of up to 256 bytes (no extras needed)


class GraphError(ValueError):
    """A graph payload that cannot or must not be decoded; the message is the recorded reason."""


@dataclasses.dataclass(frozen=True)
class GraphCaps:
    """Limits checked from the array headers, before any data is read."""

    max_nodes: int = 100_000
    max_edges: int = 1_000_000
    max_feature_values: int = 10_000_000  # N x F
    max_extra_values: int = 1_000_000  # all optional arrays together
    max_arrays: int = 16


Arrays = dict[str, np.ndarray]


# What ``np.save`` writes (``np.lib.format``): a dict literal in this exact form. Parsed by this pattern; any
# other spelling goes to numpy's own parser (``ast.literal_eval``), which is correct but ten times slower.
_CANONICAL = re.compile(r"\{'descr': '([^'\\]{1,32})', 'fortran_order': (False|True), 'shape': \(((?:\d{1,18}, ?)*\d{0,18})\), \} *\n?")


@dataclasses.dataclass(frozen=True)
class _Header:
    """One ``.npy`` member's header: what its data must be, and where that data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # where the data starts in the member
    data: bytes | None = None  # the data, when the member was small enough to read with its header


def _parse_header(text: str, prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    match = _CANONICAL.fullmatch(text)
    if match is None:  # valid but unusual spellings, and every invalid header (numpy says why)
        read = npformat.read_array_header_1_0 if len(prefix) == 2 else npformat.read_array_header_2_0
        shape, fortran, dtype = read(io.BytesIO(prefix + text.encode("latin1")), max_header_size=_MAX_HEADER)
        return shape, fortran, dtype
    descr, fortran, dims = match.groups()
    return tuple(int(d) for d in dims.split(",") if d.strip()), fortran == "True", np.dtype(descr)


def _header(stream: Any, name: str) -> _Header:
    """Shape, dtype and data offset of one ``.npy`` member from its header alone; objects are refused here."""
    try:
        version = npformat.read_magic(stream)
        width = 2 if version == (1, 0) else 4
        prefix = stream.read(width)
        length = int.from_bytes(prefix, "little")
        if len(prefix) != width or length > _MAX_HEADER or version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError("header length or version")
        raw = stream.read(length)
        text = raw.decode("utf-8" if version == (3, 0) else "latin1")
        if len(raw) != length:
            raise ValueError("truncated header")
        shape, fortran, dtype = _parse_header(text, prefix)
    except Exception as exc:
        raise GraphError(f"undecodable_graph: array {name!r} has no valid .npy header ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise GraphError(f"refused_graph: array {name!r} holds Python objects (would need unpickling; never loaded)")
    return _Header(tuple(int(d) for d in shape), dtype, bool(fortran), npformat.MAGIC_LEN + width + length)


def _check_caps(shapes: Mapping[str, tuple[int, ...]], caps: GraphCaps) -> None:
    """Refuse a graph whose headers claim more than the caps allow."""
    x, edges = shapes["x"], shapes["edge_index"]
    nodes = x[0] if x else 0
    if nodes > caps.max_nodes:
        raise GraphError(f"graph_bomb: {nodes} nodes exceed the cap of {caps.max_nodes}")
    if len(edges) == 2 and edges[1] > caps.max_edges:
        raise GraphError(f"graph_bomb: {edges[1]} edges exceed the cap of {caps.max_edges}")
    if int(np.prod(x, dtype=np.int64)) > caps.max_feature_values:
        raise GraphError(f"graph_bomb: features {x} exceed the cap of {caps.max_feature_values} values")
    extra = sum(int(np.prod(s, dtype=np.int64)) for n, s in shapes.items() if n not in REQUIRED_ARRAYS)
    if extra > caps.max_extra_values:
        raise GraphError(f"graph_bomb: optional arrays hold {extra} values, over the cap of {caps.max_extra_values}")


def _check_directory(data: bytes, caps: GraphCaps) -> None:
    """Count the zip's entries from its end record before ``zipfile`` builds an object for each (a few
    KB of payload can list thousands of entries)."""
    at = data.rfind(_EOCD, max(0, len(data) - 22 - 65535))
    if at < 0 or len(data) < at + 22:
        raise GraphError("undecodable_graph: no zip end-of-directory record")
    entries = int.from_bytes(data[at + 10 : at + 12], "little")
    size = int.from_bytes(data[at + 12 : at + 16], "little")
    if entries > caps.max_arrays or size > caps.max_arrays * (_MAX_DIRECTORY_ENTRY + 128):
        raise GraphError(f"graph_bomb: the zip lists {entries} entries in {size} bytes, over the cap of "
                         f"{caps.max_arrays} arrays")


def _open_zip(data: bytes, caps: GraphCaps) -> tuple[zipfile.ZipFile, dict[str, str]]:
    """The zip and its ``.npy`` members by array name; anything that is not an ``.npz`` is refused."""
    if not data:
        raise GraphError("empty_graph: zero-byte payload")
    if not data.startswith(b"PK"):
        kind = "a pickle" if data[:1] == b"\x80" else "a bare .npy" if data.startswith(b"\x93NUMPY") else "not a zip"
        raise GraphError(f"refused_graph: payload is {kind}, not an .npz archive (never unpickled)")
    _check_directory(data, caps)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except Exception as exc:  # BadZipFile, but also struct or EOF errors from a forged directory
        raise GraphError(f"undecodable_graph: {type(exc).__name__}") from None
    if len(names) > caps.max_arrays:
        raise GraphError(f"graph_bomb: {len(names)} arrays, over the cap of {caps.max_arrays}")
    if len(set(names)) != len(names) or not all(n.endswith(".npy") and "/" not in n for n in names):
        raise GraphError("refused_graph: members must be distinct top-level .npy arrays")
    members = {n[: -len(".npy")]: n for n in names}
    missing = [n for n in REQUIRED_ARRAYS if n not in members]
    if missing:
        raise GraphError(f"invalid_graph: missing array(s) {', '.join(missing)}")
    return archive, members


def _read_headers(archive: zipfile.ZipFile, members: Mapping[str, str]) -> dict[str, _Header]:
    """Every member's header; a member whose directory entry claims at most ``_EAGER_BYTES`` is read whole at
    the same time (one open instead of two: zipfile never inflates past the claimed size, and a member whose
    data does not match it fails its CRC)."""
    headers = {}
    for name, member in sorted(members.items()):
        try:
            stream = archive.open(member)  # encrypted or unknown compression: refused here, not a crash
        except Exception as exc:
            raise GraphError(f"undecodable_graph: array {name!r} cannot be opened ({type(exc).__name__})") from None
        with stream:
            header = _header(stream, name)
            if archive.getinfo(member).file_size <= _EAGER_BYTES:
                header = dataclasses.replace(header, data=_read_rest(stream))
        headers[name] = header
    return headers


def _read_rest(stream: Any) -> bytes:
    try:
        return stream.read()  # the CRC and the inflate are checked here
    except Exception as exc:
        raise GraphError(f"undecodable_graph: {type(exc).__name__}") from None


def _read_array(archive: zipfile.ZipFile, name: str, member: str, header: _Header) -> np.ndarray:
    """The member's data as ``np.load`` returns it (a fresh, writable array in the header's order); a large
    member is read only now, once every header has passed the caps."""
    if header.data is None:
        with archive.open(member) as stream:
            stream.seek(header.offset)
            body = _read_rest(stream)
    else:
        body = header.data
    count = int(np.prod(header.shape, dtype=np.int64))
    if len(body) < count * header.dtype.itemsize:
        raise GraphError(f"undecodable_graph: array {name!r} is shorter than its header's shape {header.shape}")
    flat = np.frombuffer(body, dtype=header.dtype, count=count).copy()
    return flat.reshape(header.shape[::-1]).transpose() if header.fortran else flat.reshape(header.shape)


def _check_types(headers: Mapping[str, _Header]) -> None:
    (eshape, edtype), (xshape, xdtype) = [(headers[n].shape, headers[n].dtype) for n in REQUIRED_ARRAYS]
    if edtype != np.dtype(np.int64) or len(eshape) != 2 or eshape[0] != 2:
        raise GraphError(f"invalid_graph: edge_index must be int64 of shape 2 x E, not {edtype} {eshape}")
    if xdtype != np.dtype(np.float32) or len(xshape) != 2:
        raise GraphError(f"invalid_graph: x must be float32 of shape N x F, not {xdtype} {xshape}")
    for name, header in headers.items():
        shape, dtype = header.shape, header.dtype
        if dtype.kind not in "biuf":
            raise GraphError(f"invalid_graph: array {name!r} has non-numeric dtype {dtype}")
        if name.startswith(NODE_PREFIX) and (not shape or shape[0] != xshape[0]):
            raise GraphError(f"invalid_graph: per-node array {name!r} of shape {shape} needs {xshape[0]} rows")


def _check_edges(edge_index: np.ndarray, nodes: int) -> None:
    if edge_index.size and (int(edge_index.min()) < 0 or int(edge_index.max()) >= nodes):
        raise GraphError(f"invalid_graph: edge_index refers to nodes outside 0..{nodes - 1}")


def decode_graph(data: bytes, caps: GraphCaps | None = None) -> Arrays:
    """The arrays of a graph payload, validated; raises GraphError with the reason otherwise."""
    caps = caps or GraphCaps()
    archive, members = _open_zip(data, caps)
    with archive:
        headers = _read_headers(archive, members)
        _check_types(headers)
        _check_caps({n: h.shape for n, h in headers.items()}, caps)
        arrays = {name: _read_array(archive, name, members[name], headers[name]) for name in sorted(members)}
    _check_edges(arrays["edge_index"], arrays["x"].shape[0])
    return arrays


def graph_size(arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The sidecar's fields of a graph (as width and height are an image's)."""
    return {"nodes": int(arrays["x"].shape[0]), "edges": int(arrays["edge_index"].shape[1])}


def probe_graph(data: bytes, caps: GraphCaps | None = None) -> dict[str, int]:
    """Nodes and edges of a payload, after every check ``decode_graph`` makes."""
    return graph_size(decode_graph(data, caps))


def encode_graph(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Deterministic ``.npz``: members sorted by name, fixed timestamps, stored (no compression)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            if array.dtype.hasobject:
                raise GraphError(f"refused_graph: array {name!r} holds Python objects")
            body = io.BytesIO()
            npformat.write_array(body, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, body.getvalue())
    return buffer.getvalue()
