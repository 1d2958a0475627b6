"""Dataset counts from the sidecars alone (never opening a tar): per shard and in total, by status."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from poisonlab.pipelines.accounting import reason_category
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.layout import list_sidecars, sidecar_path


def summarize(directory: Path) -> dict[str, Any]:
    """Samples by status and failure kind, per shard and in total; ``live`` is what the tars hold."""
    directory = Path(directory)
    shards = list_sidecars(directory) if directory.is_dir() else []
    if not shards:
        raise FileNotFoundError(f"no sidecars (NNNNN.parquet) in {directory}")
    per_shard: dict[str, dict[str, Any]] = {}
    total: Counter = Counter()
    reasons: Counter = Counter()
    for shard in shards:
        path = sidecar_path(directory, shard)
        columns = [c for c in ("status", "reason") if c in pq.read_schema(path).names]
        table = pq.read_table(path, columns=columns)
        counts = Counter(_value_counts(table.column("status"))) if "status" in columns else Counter()
        per_shard[shard] = {"samples": table.num_rows, "by_status": dict(sorted(counts.items()))}
        total.update(counts)
        if "reason" in columns:
            reasons.update(reason_category(r) for r in table.column("reason").drop_null().to_pylist() if r)
    return {
        "directory": str(directory),
        "shards": len(shards),
        "samples": sum(v["samples"] for v in per_shard.values()),
        "live": sum(v for k, v in total.items() if k in LIVE_STATUSES),
        "by_status": dict(sorted(total.items())),
        "reasons": dict(sorted(reasons.items())),
        "per_shard": per_shard,
    }


def _value_counts(column) -> dict[str, int]:  # type: ignore[no-untyped-def]
    vc = pc.value_counts(column)
    return {str(k): int(v) for k, v in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)}
