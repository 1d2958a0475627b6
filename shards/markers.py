"""Completion markers that prove which configuration produced which bytes.

A shard's ``NNNNN_stats.json`` is renamed into place last, so its presence says the shard was finished.
Presence alone is not enough to skip it on a rerun: the folder may hold another configuration's output
(another seed, image size, attack), or the tar may have been truncated or replaced after the marker was
written. So the marker records, under ``"marker"``:

* ``config``: a fingerprint of the stages and of the source's settings (not its path, so a moved input
  still resumes), canonical so that it is the same in every process;
* ``input``: a fingerprint of the input shard's bytes (tar and sidecar), for sources read from a folder;
* ``tar_bytes`` / ``tar_sha256``: the output tar as written.

``is_done`` skips a shard only when all of these still hold; a corrupt or mismatched marker means the
shard is redone. ``check_resume`` runs in the driver before any work: output written with another
configuration is refused (one clear error), or with ``overwrite`` its markers are removed so it is redone.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from poisonlab.shards.layout import is_complete, list_shards, sidecar_path, stats_path, tar_path
from poisonlab.shards.safe_open import open_regular, read_capped

MAX_STATS_BYTES = 16 * 1024 * 1024  # a completion marker is a few KB; anything larger is not ours

MARKER_KEY = "marker"
_CHUNK = 1 << 20


class MarkerConflict(ValueError):
    """The output folder holds shards written with another configuration."""


def canonical(obj: Any) -> Any:
    """A JSON-able, process-independent form of a configuration (sets sorted, dataclasses by field)."""
    if isinstance(obj, str) and obj.startswith("/") and "\n" not in obj:
        return _path_identity(Path(obj))
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, bytes):
        return hashlib.sha256(obj).hexdigest()
    if isinstance(obj, enum.Enum):
        return canonical(obj.value)
    if isinstance(obj, Path):
        return _path_identity(obj.absolute())
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (set, frozenset)):
        return sorted((canonical(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if dataclasses.is_dataclass(obj):
        return {"type": kind, **{f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    state = obj.__getstate__() if hasattr(obj, "__getstate__") else getattr(obj, "__dict__", None)
    if isinstance(state, Mapping):
        return {"type": kind, **canonical({k: v for k, v in state.items() if not str(k).startswith("_")})}
    return {"type": kind}  # a callable or an opaque object: its type is all that is stable


def _path_identity(path: Path) -> Any:
    """A file is identified by its bytes; anything else (a folder, a staging folder already removed) by
    nothing: the output must not depend on where it runs, nor on scratch space cleaned after the run."""
    try:
        if path.is_file():
            return {"file_sha256": file_sha256(path)}
    except OSError:
        pass
    return {"folder": True}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(canonical(obj), sort_keys=True).encode()).hexdigest()[:32]


def file_sha256(path: Path) -> str:
    """The sha256 of a regular file, never read through a link or from a FIFO (``UnsafeFileError``)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_HASHED: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """An input file is hashed once per process (``is_done`` and the writer both ask), unless it changed."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        if len(_HASHED) > 4096:
            _HASHED.clear()
        _HASHED[key] = file_sha256(path)
    return _HASHED[key]


def _source_settings(source: Any) -> Any:
    """The source's configuration without the folder it reads (a folder's identity is its bytes)."""
    settings = canonical(source)
    if isinstance(settings, dict):
        settings.pop("directory", None)
    return settings


@dataclasses.dataclass(frozen=True)
class ShardMarker:
    """What a finished shard must prove: the configuration digest, and how to fingerprint its input."""

    config: str
    input_directory: str | None = None  # a folder source: fingerprint its shard's bytes

    @classmethod
    def for_task(cls, source: Callable[..., Any], stages: Sequence[Any]) -> ShardMarker:
        config = _digest({"source": _source_settings(source), "stages": [canonical(s) for s in stages]})
        directory = getattr(source, "directory", None)
        return cls(config, str(directory) if isinstance(directory, str) else None)

    def input_fingerprint(self, shard: str) -> str | None:
        if self.input_directory is None:
            return None
        digest = hashlib.sha256()
        for path in (tar_path(Path(self.input_directory), shard), sidecar_path(Path(self.input_directory), shard)):
            digest.update(f"{path.name}:{_cached_sha256(path) if path.exists() else '-'}\n".encode())
        return digest.hexdigest()[:32]

    def expected(self, shard: str) -> dict[str, Any]:
        """The marker fields known before writing (the writer adds the tar's size and sha256)."""
        return {"config": self.config, "input": self.input_fingerprint(shard)}


def read_marker_file(directory: Path, shard: str) -> dict[str, Any] | None:
    """The parsed stats file, or None when it is missing, unreadable, a link or FIFO, or not a JSON object."""
    path = stats_path(directory, shard)
    try:
        with open_regular(path) as fh:
            data = json.loads(read_capped(fh, MAX_STATS_BYTES, path.name).decode("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("shard"), str) else None


def _tar_matches(directory: Path, shard: str, recorded: Mapping[str, Any]) -> bool:
    path = tar_path(directory, shard)
    size, sha = recorded.get("tar_bytes"), recorded.get("tar_sha256")
    if size is None or sha is None:
        return True  # a marker from before tar digests were recorded: presence is all it proves
    try:
        return path.lstat().st_size == size and file_sha256(path) == sha
    except OSError:  # gone, a link or a FIFO: not the tar the marker describes
        return False


def is_done(directory: Path, shard: str, marker: ShardMarker | None) -> bool:
    """Skip only a shard whose marker parses and still matches its configuration, input and tar."""
    directory = Path(directory)
    if not is_complete(directory, shard):
        return False
    data = read_marker_file(directory, shard)
    if data is None:
        return False
    recorded = data.get(MARKER_KEY) or {}
    if not isinstance(recorded, dict) or not _tar_matches(directory, shard, recorded):
        return False
    if marker is None or "config" not in recorded:
        return True
    return recorded.get("config") == marker.config and recorded.get("input") == marker.input_fingerprint(shard)


def _conflicts(directory: Path, markers: Mapping[str, ShardMarker]) -> list[str]:
    """Shards in ``directory`` finished under another configuration (or not planned by this run at all)."""
    out = []
    for shard in list_shards(directory):
        data = read_marker_file(directory, shard)
        recorded = (data or {}).get(MARKER_KEY)
        if not isinstance(recorded, dict) or "config" not in recorded:
            continue
        if shard not in markers or recorded["config"] != markers[shard].config:
            out.append(shard)
    return out


def check_resume(tasks: Iterable[Any], overwrite: bool = False) -> int:
    """Refuse to resume over another configuration's shards, or (``overwrite``) remove them to be redone.

    ``tasks`` are shard tasks whose sink may carry ``directory`` and ``marker``; returns how many shards
    were removed. Runs in the driver, before any task.
    """
    by_folder: dict[str, dict[str, ShardMarker]] = {}
    for task in tasks:
        marker, folder = getattr(task.sink, "marker", None), getattr(task.sink, "directory", None)
        if isinstance(marker, ShardMarker) and isinstance(folder, str):
            by_folder.setdefault(folder, {})[task.shard] = marker
    removed = 0
    for folder, markers in by_folder.items():
        if not Path(folder).is_dir():
            continue
        conflicts = _conflicts(Path(folder), markers)
        if conflicts and not overwrite:
            raise MarkerConflict(
                f"{folder} holds shards written with another configuration (e.g. shard {conflicts[0]}); "
                "use another output folder, or --overwrite to replace them")
        for shard in conflicts:
            for path in (stats_path(Path(folder), shard), tar_path(Path(folder), shard),
                         sidecar_path(Path(folder), shard)):
                path.unlink(missing_ok=True)
            removed += 1
    return removed
