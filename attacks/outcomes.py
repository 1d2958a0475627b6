"""What became of every planned sample, read back from the output sidecars.

The planner counts a sample as live from its sidecar row (or the tar) without decoding it: probing every
image in the driver would read the whole dataset twice. The run-time reader may still refuse a planned
sample (an undecodable image, a caption over the cap, a key the sidecar lists but the tar lacks), and the
poisoning stage never sees it live. Rather than trusting the two readings to agree, the run's books are
made from the plan itself: each planned (shard, key, attack) is looked up in the written sidecars and
is either *done* (this run's provenance on a live row) or *failed* with the reason its row records. So
planned = done + failed holds by construction, and a refused sample is reported, never a crash after the
shards are written.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import pyarrow.parquet as pq

from poisonlab.attacks.planner import ShardPlan
from poisonlab.pipelines.accounting import reason_category
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.layout import atomic_write_json, sidecar_path
from poisonlab.shards.sidecar import printable

MISSING = "poison: missing_from_output: the planned sample has no row in the output shard"
NOT_POISONED = "poison: not_poisoned: the planned sample was written without this run's change"


@dataclasses.dataclass
class AttackOutcome:
    """One attack's share of the books: planned = done + failed."""

    planned: int = 0
    done: int = 0
    failed: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass
class _Row:
    status: str
    reason: str | None
    run: str | None
    attack_id: str | None


def _provenance(raw: str | None) -> tuple[str | None, str | None]:
    if not raw:
        return None, None
    try:
        record = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    return record.get("run"), record.get("attack_id")


def _rows(directory: Path, shard: str) -> dict[str, list[_Row]]:
    """The output sidecar's rows by key (a key may appear twice: a duplicate quarantined by the reader)."""
    path = sidecar_path(directory, shard)
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["key", "status", "reason", "provenance"])
    out: dict[str, list[_Row]] = {}
    for row in table.to_pylist():
        run, attack_id = _provenance(row["provenance"])
        out.setdefault(str(row["key"]), []).append(_Row(row["status"], row["reason"], run, attack_id))
    return out


def _fate(rows: list[_Row], run_id: str, attack_id: str) -> str | None:
    """None when the sample was poisoned by this run and attack; else the reason it was not."""
    if any(r.status in LIVE_STATUSES and r.run == run_id and r.attack_id == attack_id for r in rows):
        return None
    refused = [r for r in rows if r.status not in LIVE_STATUSES]
    if refused:
        return refused[0].reason or refused[0].status
    return NOT_POISONED if rows else MISSING


def _planned(plan: ShardPlan) -> Iterable[tuple[str, str]]:
    yield from plan.modified
    for key, attack_id, _ in plan.added:
        yield key, attack_id


def plan_outcomes(directory: Path, plans: Mapping[str, ShardPlan], run_id: str) -> dict[str, AttackOutcome]:
    """Per attack id: how many planned samples were done, how many failed and why (reason categories)."""
    outcomes: dict[str, AttackOutcome] = {}
    for shard, plan in plans.items():
        if not len(plan):
            continue
        rows = _rows(Path(directory), shard)
        for key, attack_id in _planned(plan):
            outcome = outcomes.setdefault(attack_id, AttackOutcome())
            outcome.planned += 1
            reason = _fate(rows.get(printable(key), []), run_id, attack_id)
            if reason is None:
                outcome.done += 1
            else:
                outcome.failed += 1
                outcome.reasons[reason_category(reason)] += 1
    return outcomes


RUN_SUMMARY_FILE = "poison.json"


def write_run_summary(directory: Path, summary: Mapping[str, object]) -> Path:
    """``poison.json``: the run's books (planned, done, failed with reasons per attack) beside the manifest."""
    path = Path(directory) / RUN_SUMMARY_FILE
    books = {k: v for k, v in summary.items() if k not in ("out", "manifest")}  # no paths: bytes never depend on them
    atomic_write_json(path, json.loads(json.dumps(books, default=str)))
    return path
