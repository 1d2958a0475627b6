"""A planned dataset split into per-shard parquet parts, and img2dataset's key layout.

Ingest and local import both start by writing their plan, one row per input (a URL, an image file), as
``{shard:05d}.parquet`` parts of ``samples_per_shard`` rows. A part is what one shard task reads, and
the row order fixes the keys: row ``i`` of the plan gets img2dataset's key for position ``i``, so an
ingested shard, the img2dataset output it came from and a re-run all name every sample the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.pipelines.accounting import ShardResult, ShardStats, shard_totals, stats_of
from poisonlab.pipelines.executor import ShardTask
from poisonlab.shards.dataset import DEFAULT_MODALITY, write_dataset_record, written_extensions
from poisonlab.shards.layout import atomic_write_bytes, atomic_write_json, list_shards, shard_name
from poisonlab.shards.plan import finalize_folder

SHARD_DIGITS = 5  # img2dataset's ``oom_shard_count``


def position_digits(samples_per_shard: int) -> int:
    """img2dataset's ``oom_sample_per_shard``: digits for the position of a sample inside its shard."""
    return math.ceil(math.log10(samples_per_shard))


def sample_key(index: int, samples_per_shard: int) -> str:
    """The key img2dataset gives row ``index`` of its input (9 digits at its default 10,000 per shard)."""
    shard, position = divmod(index, samples_per_shard)
    digits = position_digits(samples_per_shard)
    return f"{shard * 10**digits + position:0{digits + SHARD_DIGITS}d}"


def part_path(directory: Path, shard: str) -> Path:
    return Path(directory) / f"{shard}.parquet"


def write_parts(table: pa.Table, directory: Path, samples_per_shard: int) -> list[str]:
    """Split ``table`` in row order into parts, each with its rows' ``key``; returns the shard names."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be at least 1, not {samples_per_shard}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = pa.array([sample_key(i, samples_per_shard) for i in range(table.num_rows)], type=pa.string())
    table = table.append_column("key", keys) if "key" not in table.column_names else table
    names = []
    for index in range(max(1, math.ceil(table.num_rows / samples_per_shard))):
        name = shard_name(index)
        part = table.slice(index * samples_per_shard, samples_per_shard)
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink)
        atomic_write_bytes(part_path(directory, name), sink.getvalue().to_pybytes())
        names.append(name)
    return names


def read_part(directory: Path, shard: str) -> list[dict]:
    """The planned rows of one shard, in key order."""
    return pq.read_table(part_path(directory, shard)).to_pylist()


def list_parts(directory: Path) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.parquet") if p.stem.isdigit())


class PlanError(RuntimeError):
    """The output folder holds something other than this plan's shards."""


def saved_plan(out: Path, records: Sequence[Path], fingerprint: str) -> dict[str, Any] | None:
    """The saved record of this same plan (to resume or skip), None for a fresh folder; refuse anything else.

    ``records`` are the files a plan leaves (the finished record, then the in-progress plan); a
    record with another fingerprint means another input or other options wrote ``out``.
    """
    for path in records:
        if Path(path).exists():
            record = json.loads(Path(path).read_text())
            if record.get("fingerprint") != fingerprint:
                raise PlanError(f"{out} holds the output of another input or other options; use a new folder")
            return record
    if Path(out).is_dir() and (list_shards(out) or any(Path(out).glob("*.parquet"))):
        raise PlanError(f"{out} already holds shards that this plan did not write; use a new folder")
    return None


@dataclasses.dataclass(frozen=True)
class PartsPlan:
    """Where a planned dataset's parts live and what they hold; ingest and local import extend it with their spec."""

    out: Path
    work_dir: str
    record_name: str
    fingerprint: str
    shards: tuple[str, ...]
    rows: int
    description: dict[str, Any]  # the options that made this plan, as recorded

    @property
    def work(self) -> Path:
        return Path(self.out) / self.work_dir

    @property
    def parts(self) -> Path:
        return self.work / "parts"

    def record(self) -> dict[str, Any]:
        """The in-progress plan (``plan.json``) and, with totals added, the finished record."""
        return {"fingerprint": self.fingerprint, "shards": list(self.shards), "rows": self.rows,
                "spec": self.description}


Plan = TypeVar("Plan", bound=PartsPlan)


def prepare_parts(plan_type: type[Plan], out: Path, work_dir: str, record_name: str, fingerprint: str,
                  description: dict[str, Any], build: Callable[[], pa.Table], samples_per_shard: int,
                  **fields: Any) -> Plan:
    """The saved plan of this same run (to resume), else ``build()``'s table written as fresh parts.

    ``build`` runs only for a fresh folder, so a resumed run does not reread its inputs; a folder
    holding another plan's output is refused before anything is written. ``fields`` are the plan
    type's own (its spec).
    """
    out = Path(out)
    saved = saved_plan(out, (out / record_name, out / work_dir / "plan.json"), fingerprint)
    if saved is not None:
        return plan_type(out, work_dir, record_name, fingerprint, tuple(saved["shards"]), int(saved["rows"]),
                         description, **fields)
    table = build()
    shutil.rmtree(out / work_dir / "parts", ignore_errors=True)
    shards = write_parts(table, out / work_dir / "parts", samples_per_shard)
    plan = plan_type(out, work_dir, record_name, fingerprint, tuple(shards), table.num_rows, description, **fields)
    atomic_write_json(plan.work / "plan.json", plan.record())
    return plan


def finish_plan(out: Path, work: Path, record_name: str, record: dict[str, Any], rows: int,
                stats: Sequence[ShardStats]) -> dict[str, Any]:
    """Once every shard is written: check that every planned row has its sidecar row, write ``sizes.json``,
    ``dataset.json`` and the finished record (``record`` plus totals), then remove the plan."""
    done = {**shard_totals(stats), **record}  # the record's list of shards, not their count
    if done["samples"] != rows:
        raise PlanError(f"accounting: the plan has {rows} rows but the sidecars {done['samples']}")
    finalize_folder(Path(out), stats)
    write_dataset_record(Path(out), DEFAULT_MODALITY, written_extensions(Path(out), [s.shard for s in stats]))
    atomic_write_json(Path(out) / record_name, done)
    shutil.rmtree(work, ignore_errors=True)
    return done


@dataclasses.dataclass(frozen=True)
class PartsJob:
    """A planned ingest or import as a ``ShardJob``: its shard tasks, then ``finish_plan`` over the results."""

    plan: PartsPlan
    plan_tasks: Callable[[], list[ShardTask]]

    def tasks(self) -> list[ShardTask]:
        return self.plan_tasks()

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        plan = self.plan
        return finish_plan(plan.out, plan.work, plan.record_name, plan.record(), plan.rows, stats_of(results))
