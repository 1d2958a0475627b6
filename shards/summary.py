"""Dataset counts from the sidecars alone (never opening a tar): per shard and in total, by status.

Reads poisonlab's sidecars and img2dataset's alike (its ``success`` rows are live, its ``error_message``
stands in for a reason). Content-hash mismatches are counted on their own, per shard and in total,
whichever tool verified: poisonlab's ``hash_mismatch`` status or img2dataset's ``"hash mismatch"`` error.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from poisonlab.pipelines.accounting import reason_category
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.layout import list_sidecars, sidecar_path

_LIVE = LIVE_STATUSES | {"success"}  # img2dataset's status of a sample in the tar
HASH_MISMATCH = "hash_mismatch"
_I2D_MISMATCH = "hash mismatch"  # img2dataset's error_message when its verify_hash refuses an image


def summarize(directory: Path) -> dict[str, Any]:
    """Samples by status and failure kind, per shard and in total; ``live`` is what the tars hold."""
    directory = Path(directory)
    shards = list_sidecars(directory) if directory.is_dir() else []
    if not shards:
        raise FileNotFoundError(f"no sidecars (NNNNN.parquet) in {directory}")
    per_shard: dict[str, dict[str, Any]] = {}
    total: Counter = Counter()
    reasons: Counter = Counter()
    mismatches = 0
    for shard in shards:
        path = sidecar_path(directory, shard)
        columns = [c for c in ("status", "reason", "error_message") if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=columns)
        counts = Counter(_value_counts(table.column("status"))) if "status" in columns else Counter()
        shard_mismatches = _hash_mismatches(table)
        per_shard[shard] = {"samples": table.num_rows, "by_status": dict(sorted(counts.items())),
                            "hash_mismatch": shard_mismatches,
                            "hash_mismatch_rate": _rate(shard_mismatches, table.num_rows)}
        total.update(counts)
        mismatches += shard_mismatches
        reasons.update(_reason_categories(table))
    samples = sum(v["samples"] for v in per_shard.values())
    return {
        "directory": str(directory),
        "shards": len(shards),
        "samples": samples,
        "live": sum(v for k, v in total.items() if k in _LIVE),
        "by_status": dict(sorted(total.items())),
        "reasons": dict(sorted(reasons.items())),
        "hash_mismatch": mismatches,
        "hash_mismatch_rate": _rate(mismatches, samples),
        "per_shard": per_shard,
    }


def _rate(count: int, rows: int) -> float:
    return count / rows if rows else 0.0


def _hash_mismatches(table) -> int:  # type: ignore[no-untyped-def]
    count = 0
    if "status" in table.column_names:
        count += int(pc.sum(pc.equal(table.column("status"), HASH_MISMATCH)).as_py() or 0)
    if "error_message" in table.column_names and "reason" not in table.column_names:
        count += int(pc.sum(pc.equal(table.column("error_message"), _I2D_MISMATCH)).as_py() or 0)
    return count


def _reason_categories(table) -> list[str]:  # type: ignore[no-untyped-def]
    """Kinds of failure: our ``reason`` column, or img2dataset's ``status: error_message``."""
    if "reason" in table.column_names:
        return [reason_category(r) for r in table.column("reason").drop_null().to_pylist() if r]
    if "error_message" in table.column_names and "status" in table.column_names:
        rows = zip(table.column("status").to_pylist(), table.column("error_message").to_pylist(), strict=True)
        return [reason_category(f"{status}: {message}") for status, message in rows if message]
    return []


def _value_counts(column) -> dict[str, int]:  # type: ignore[no-untyped-def]
    vc = pc.value_counts(column)
    return {str(k): int(v) for k, v in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)}
