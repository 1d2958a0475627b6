"""Does a shard's sidecar describe its tar? The checks behind ``poisonlab stats``.

Counts from sidecars are only as good as the sidecars: a tar without one, a sidecar without its
``status`` column, a sidecar whose live rows are not the tar's samples, or a shard whose completion
marker recorded a shard-level error (a zip under a ``.tar`` name, a refused tar) all make the
counts wrong without any of them being visible in the counts. Each check returns problems as
``"kind: details"`` strings, the same form as sidecar reasons, so they can be counted by kind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.keys import canonical_name, display_key, split_member_name, unsafe_name
from poisonlab.shards.layout import sidecar_path, stats_path, tar_path
from poisonlab.shards.plan import MAX_STATS_BYTES
from poisonlab.shards.reader import ReadPolicy, audit_members
from poisonlab.shards.safe_open import open_regular, read_capped
from poisonlab.shards.tarview import member_names

LIVE = LIVE_STATUSES | {"success"}  # img2dataset's status of a sample in the tar
SIDECAR_COLUMNS_READ = ("key", "status", "reason", "error_message")
_EXAMPLES = 3


def read_sidecar(directory: Path, shard: str) -> tuple[pa.Table | None, list[str]]:
    """The sidecar's counting columns, or None, with what is wrong with it (missing, unreadable, malformed)."""
    path = sidecar_path(directory, shard)
    if not (path.exists() or path.is_symlink()):
        return None, [f"missing_sidecar: {shard}.tar has no {path.name}"]
    try:
        with open_regular(path) as fh:
            sidecar = pq.ParquetFile(fh)
            columns = [c for c in SIDECAR_COLUMNS_READ if c in sidecar.schema_arrow.names]
            table = sidecar.read(columns=columns)
    except Exception as exc:  # not parquet, a link, a FIFO: the shard's problem, not a crash of the command
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{path.name}: {type(exc).__name__}: {exc}"
        return None, [f"unreadable_sidecar: {detail}"]
    problems = [f"malformed_sidecar: {path.name} has no {column} column ({table.num_rows} rows)"
                for column in ("key", "status") if column not in table.column_names]
    return table, problems


def recorded_shard_errors(directory: Path, shard: str) -> list[str]:
    """Shard-level errors the run that wrote this shard recorded in its completion marker (if it has one)."""
    path = stats_path(directory, shard)
    if not (path.exists() or path.is_symlink()):
        return []
    try:
        with open_regular(path) as fh:
            errors = json.loads(read_capped(fh, MAX_STATS_BYTES, path.name)).get("shard_errors") or []
    except Exception as exc:
        return [f"unreadable_stats: {path.name}: {type(exc).__name__}: {exc}"]
    return [f"shard_error: {error}" for error in errors]


def live_keys(table: pa.Table | None) -> set[str] | None:
    """Keys of the sidecar rows that say their sample is in the tar (None when the sidecar cannot tell)."""
    if table is None or "key" not in table.column_names or "status" not in table.column_names:
        return None
    rows = zip(table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True)
    return {str(key) for key, status in rows if status in LIVE and key is not None}


def _key(name: str) -> str:
    name = canonical_name(name)
    key = split_member_name(name)[0]
    return display_key(key) if unsafe_name(name) else key


def _examples(keys: set[str]) -> str:
    return ", ".join(repr(k) for k in sorted(keys)[:_EXAMPLES]) + (", ..." if len(keys) > _EXAMPLES else "")


def check_tar(directory: Path, shard: str, live: set[str] | None, policy: ReadPolicy) -> list[str]:
    """The tar as every reader sees it (``audit_members``), and its samples against the sidecar's live rows."""
    path = tar_path(directory, shard)
    if not (path.exists() or path.is_symlink()):
        return [f"missing_tar: {sidecar_path(directory, shard).name} has no {path.name}"]
    members, tar_problems = member_names(path)
    problems = audit_members(members, tar_problems, policy)
    if live is not None and not any(p.kind in ("unreadable_tar", "not_a_tar") for p in tar_problems):
        in_tar = {_key(m.name) for m in members if m.kind == "file"}
        if missing := live - in_tar:
            problems.append(f"sidecar_tar_mismatch: {len(missing)} live sidecar rows have no sample in the tar "
                            f"({_examples(missing)})")
        if extra := in_tar - live:
            problems.append(f"sidecar_tar_mismatch: {len(extra)} samples in the tar have no live sidecar row "
                            f"({_examples(extra)})")
    return problems


def check_shard(directory: Path, shard: str, policy: ReadPolicy, tars: bool = True) -> tuple[pa.Table | None, list[str]]:
    """The sidecar's counting columns and every problem found with the shard's files."""
    table, problems = read_sidecar(directory, shard)
    problems += recorded_shard_errors(directory, shard)
    if tars:
        problems += check_tar(directory, shard, live_keys(table), policy)
    return table, problems


def problem_kinds(problems: dict[str, list[str]]) -> dict[str, Any]:
    """How many shards have each kind of problem."""
    kinds: dict[str, int] = {}
    for shard_problems in problems.values():
        for kind in {p.split(":", 1)[0] for p in shard_problems}:
            kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))
