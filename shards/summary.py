"""Dataset counts from the sidecars alone (never opening a tar): per shard and in total, by status."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from poisonlab.shards.layout import list_sidecars, sidecar_path


def summarize(directory: Path) -> dict[str, Any]:
    directory = Path(directory)
    shards = list_sidecars(directory)
    if not shards:
        raise FileNotFoundError(f"no sidecars (NNNNN.parquet) in {directory}")
    per_shard: dict[str, dict[str, Any]] = {}
    total: Counter = Counter()
    reasons: Counter = Counter()
    for shard in shards:
        table = pq.read_table(sidecar_path(directory, shard), columns=None)
        status = table.column("status")
        counts = Counter({str(k): int(v) for k, v in zip(*_value_counts(status))})
        per_shard[shard] = {"samples": table.num_rows, "by_status": dict(sorted(counts.items()))}
        total.update(counts)
        if "reason" in table.column_names:
            for r in table.column("reason").to_pylist():
                if r:
                    reasons[":".join(p.strip() for p in r.split(":")[:2])] += 1
    return {
        "directory": str(directory),
        "shards": len(shards),
        "samples": sum(total.values()),
        "by_status": dict(sorted(total.items())),
        "reasons": dict(sorted(reasons.items())),
        "per_shard": per_shard,
    }


def _value_counts(column) -> tuple[list[str], list[int]]:  # type: ignore[no-untyped-def]
    vc = pc.value_counts(column)
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()
