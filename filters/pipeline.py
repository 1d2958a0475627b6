"""The sanitize steps as plain functions: embed shards, clean shards by a decision.

Both are ``ShardJob``s (``EmbedJob``, ``CleanJob``); ``run`` is any ``JobRunner``: ``run_job_local`` here
(tests, notebooks), or ``poisonlab.flows.runtime.job_runner`` (Prefect on Dask), which runs these same jobs.
Scanning is ``poisonlab.filters.scan.scan`` (one global step, in this process) and recall is
``poisonlab.filters.metrics.recall_report``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.filters.clean import EXCLUSIONS_FILE, STAGE_NAME, plan_clean_tasks, write_clean_report
from poisonlab.filters.decisions import Decision, exclusion_table, parse_decision
from poisonlab.filters.embed import EmbedConfig, plan_embed_tasks
from poisonlab.filters.scores import ScoreTable, load_scores, scores_ref
from poisonlab.filters.store import EmbeddingMismatchError, file_digest
from poisonlab.pipelines.accounting import ShardResult, shard_totals, stats_of
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.job import JobRunner, run_job_local
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.dataset import copy_dataset_record
from poisonlab.shards.fingerprint import DatasetRef, check_same_dataset, dataset_ref, with_fingerprints
from poisonlab.shards.layout import atomic_path, find_run_file, list_shards, sidecar_path
from poisonlab.shards.plan import finalize_folder, load_stats

Runner = JobRunner  # the name callers import
SOURCE_LIVE = LIVE_STATUSES | {"success"}  # img2dataset's live rows are "success"


@dataclasses.dataclass
class EmbedJob:
    """Embedding a folder as a ``ShardJob``; ``tasks()`` loads the model once and creates the store."""

    src: Path
    out_root: Path
    config: EmbedConfig
    store: Path | None = None

    def tasks(self) -> list[ShardTask]:
        tasks, self.store = plan_embed_tasks(Path(self.src), Path(self.out_root), self.config)
        return tasks

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        assert self.store is not None, "finalize before tasks()"
        return {"store": str(self.store), "model_id": self.store.name, **shard_totals(stats_of(results))}


def embed_shards(src: Path, out_root: Path, config: EmbedConfig, run: JobRunner = run_job_local) -> dict[str, Any]:
    """Embed every shard of ``src`` into ``out_root/<model_id>`` (skips shards already embedded)."""
    return run(EmbedJob(Path(src), Path(out_root), config))


def check_coverage(src: Path, table: ScoreTable) -> list[str]:
    """Scores must cover exactly the samples of ``src``: returns shards without a sidecar (unchecked)."""
    score_keys = set(table.keys)
    seen: set[str] = set()
    unchecked, missing = [], []
    for shard in list_shards(Path(src)):
        path = sidecar_path(Path(src), shard)
        if not path.exists():
            unchecked.append(shard)
            continue
        side = pq.read_table(path, columns=["key", "status"])
        for key, status in zip(side.column("key").to_pylist(), side.column("status").to_pylist(), strict=True):
            seen.add(key)
            if status in SOURCE_LIVE and key not in score_keys:
                missing.append(key)
    unknown = [] if unchecked else [k for k in table.keys if k not in seen]
    if missing or unknown:
        example = (missing or unknown)[0]
        raise EmbeddingMismatchError(
            f"the scores do not match the shards in {src}: {len(missing)} live samples have no score and "
            f"{len(unknown)} scored samples are not in these shards (e.g. {example!r}); "
            "were the embeddings computed from these shards?"
        )
    return unchecked


@dataclasses.dataclass
class CleanJob:
    """A decided clean as a ``ShardJob``: the exclusion table is written, the shards are not yet."""

    src: Path
    out: Path
    scores: str  # as given, for the report
    decision: Decision
    exclusions: pa.Table
    samples: int
    live: int
    unchecked: list[str]
    excluded_out: Path | None = None
    dataset: DatasetRef | None = None  # the folder cleaned (its fingerprint is in the exclusion table too)
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def exclusions_path(self) -> Path:
        return find_run_file(self.out, EXCLUSIONS_FILE)

    def tasks(self) -> list[ShardTask]:
        return plan_clean_tasks(self.src, self.out, self.exclusions_path, self.excluded_out)

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        """``sizes.json`` and ``dataset.json``, the books against the exclusion table, ``clean.json``."""
        stats, excluded_out = stats_of(results), self.excluded_out
        finalize_folder(self.out, stats)
        copy_dataset_record(self.src, self.out)
        dropped = sum(c.dropped for s in stats for c in s.stages if c.stage == STAGE_NAME)
        skipped_any = any(not s.stages for s in stats)
        if not skipped_any and dropped != self.exclusions.num_rows:
            raise RuntimeError(f"{self.exclusions.num_rows} samples were to be excluded but the shards dropped {dropped}")
        if excluded_out is not None:
            finalize_folder(excluded_out, [load_stats(excluded_out, s.shard) for s in stats])
            copy_dataset_record(self.src, excluded_out)
        report = {
            "decision": {"name": self.decision.kind, "params": self.decision.params.model_dump(mode="json")},
            "scores": self.scores,
            "samples": self.samples,
            "live": self.live,
            "excluded": self.exclusions.num_rows,
            "by_rule": dict(sorted(Counter(r for r in self.exclusions.column("rule").to_pylist()).items())),
            "exclusions": str(self.exclusions_path),
            "out": str(self.out),
            "excluded_out": str(excluded_out) if excluded_out is not None else None,
            "unchecked_shards": self.unchecked,
            "shards": shard_totals(stats),
            "dataset": self.dataset.to_dict() if self.dataset is not None else None,
            "warnings": self.warnings,
        }
        write_clean_report(self.out, report)
        return report


def check_scores_dataset(src: Path, scores: Path, table: ScoreTable, force: bool = False) -> tuple[DatasetRef, list[str]]:
    """The scores must describe ``src`` itself: the folder that was embedded and scanned (a poisoned copy
    is another folder than its source). Refused in one line unless ``force``; returns ``src``'s reference
    and warnings (a scan that records no fingerprint is accepted on the key check of ``check_coverage``)."""
    here = dataset_ref(src)
    warnings = check_same_dataset((f"the scores in {scores}", scores_ref(table.info)), ("the shards to clean", here),
                                  force)
    return here, warnings


def prepare_clean(src: Path, scores: Path, decision: Decision | dict | str, out: Path,
                  excluded_out: Path | None = None, force: bool = False) -> CleanJob:
    """Decide from the score tables and write ``out/_run/exclusions.parquet``; refuse another decision's folder,
    and scores of another dataset (unless ``force``)."""
    src, out = Path(src), Path(out)
    decision = decision if isinstance(decision, Decision) else parse_decision(decision)
    table = load_scores(Path(scores))
    dataset, warnings = check_scores_dataset(src, Path(scores), table, force)
    unchecked = check_coverage(src, table)
    exclusions = with_fingerprints(exclusion_table(table, decision.decide(table)), [dataset.fingerprint])
    path = find_run_file(out, EXCLUSIONS_FILE)  # an older folder resumes with its table where it is
    if out.exists() and list_shards(out) and not path.exists():
        raise FileExistsError(f"{out} already holds shards that no clean wrote; use a fresh output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staged:  # renamed into place only if it is the same decision (or the first)
        pq.write_table(exclusions, staged, compression="zstd")
        if path.exists() and file_digest(path) != file_digest(staged) and list_shards(out):
            raise FileExistsError(f"{out} holds shards cleaned by another decision; use a fresh output folder")
    return CleanJob(src, out, str(scores), decision, exclusions, len(table), int(table.live.sum()), unchecked,
                    Path(excluded_out) if excluded_out is not None else None, dataset, warnings)


def clean_shards(src: Path, scores: Path, decision: Decision | dict | str, out: Path,
                 run: JobRunner = run_job_local, excluded_out: Path | None = None, force: bool = False) -> dict[str, Any]:
    """Decide from the score tables, write ``out/_run/exclusions.parquet``, then the cleaned shards."""
    return run(prepare_clean(src, scores, decision, out, excluded_out, force))
