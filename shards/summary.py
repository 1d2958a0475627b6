"""Dataset counts from the sidecars, per shard and in total, by status, and what makes them untrustworthy.

Reads poisonlab's sidecars and img2dataset's alike (its ``success`` rows are live, its ``error_message``
stands in for a reason). Content-hash mismatches are counted on their own, per shard and in total,
whichever tool verified: poisonlab's ``hash_mismatch`` status or img2dataset's ``"hash mismatch"`` error.

Counts never silently skip a shard: a tar without a sidecar, a sidecar without a status column, an
unreadable sidecar, a shard-level error recorded by the run that wrote the shard, a tar that other
readers would read differently, and a sidecar whose live rows are not the tar's samples are all
reported per shard under ``problems`` (``shardcheck``). Checking the tars reads their headers only
(``check_tars=False`` skips it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from poisonlab.pipelines.accounting import reason_category
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.layout import list_shards, list_sidecars
from poisonlab.shards.shardcheck import LIVE, check_shard, problem_kinds

HASH_MISMATCH = "hash_mismatch"
_I2D_MISMATCH = "hash mismatch"  # img2dataset's error_message when its verify_hash refuses an image


def summarize(directory: Path, check_tars: bool = True) -> dict[str, Any]:
    """Samples by status and failure kind, per shard and in total; ``live`` is what the sidecars say the
    tars hold; ``problems`` lists, per shard, everything that makes those counts wrong."""
    directory = Path(directory)
    shards = sorted(set(list_sidecars(directory)) | set(list_shards(directory))) if directory.is_dir() else []
    if not shards:
        raise FileNotFoundError(f"no shards or sidecars (NNNNN.tar, NNNNN.parquet) in {directory}")
    policy = read_policy_for(directory)
    per_shard: dict[str, dict[str, Any]] = {}
    problems: dict[str, list[str]] = {}
    total: Counter = Counter()
    reasons: Counter = Counter()
    for shard in shards:
        table, shard_problems = check_shard(directory, shard, policy, check_tars)
        if shard_problems:
            problems[shard] = shard_problems
        rows = table.num_rows if table is not None else 0
        status = table is not None and "status" in table.column_names
        counts = Counter(_value_counts(table.column("status"))) if status else Counter()
        mismatches = _hash_mismatches(table) if table is not None else 0
        per_shard[shard] = {"samples": rows, "by_status": dict(sorted(counts.items())), "hash_mismatch": mismatches,
                            "hash_mismatch_rate": _rate(mismatches, rows), "problems": shard_problems}
        total.update(counts)
        reasons.update(_reason_categories(table) if table is not None else [])
    samples = sum(v["samples"] for v in per_shard.values())
    mismatches = sum(v["hash_mismatch"] for v in per_shard.values())
    return {
        "directory": str(directory),
        "shards": len(shards),
        "samples": samples,
        "live": sum(v for k, v in total.items() if k in LIVE),
        "by_status": dict(sorted(total.items())),
        "reasons": dict(sorted(reasons.items())),
        "hash_mismatch": mismatches,
        "hash_mismatch_rate": _rate(mismatches, samples),
        "problems": problems,
        "problem_kinds": problem_kinds(problems),
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
