"""The sanitize steps as plain functions: embed shards, clean shards by a decision.

``run`` is any function that runs shard tasks and returns their stats in order: ``run_local`` here (tests,
notebooks), or ``poisonlab.flows.sanitize``'s Prefect/Dask runner, which wraps these same functions.
Scanning is ``poisonlab.filters.scan.scan`` (one global step, in this process) and recall is
``poisonlab.filters.metrics.recall_report``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from poisonlab.filters.clean import EXCLUSIONS_FILE, STAGE_NAME, plan_clean_tasks, write_clean_report
from poisonlab.filters.decisions import Decision, exclusion_table, parse_decision
from poisonlab.filters.embed import EmbedConfig, plan_embed_tasks
from poisonlab.filters.scores import ScoreTable, load_scores
from poisonlab.filters.store import EmbeddingMismatchError, file_digest
from poisonlab.pipelines.accounting import ShardStats
from poisonlab.pipelines.executor import ShardTask, run_local
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.layout import atomic_path, list_shards, sidecar_path
from poisonlab.shards.plan import finalize_folder, load_stats

Runner = Callable[[Sequence[ShardTask]], list[ShardStats]]
SOURCE_LIVE = LIVE_STATUSES | {"success"}  # img2dataset's live rows are "success"


def _totals(stats: Sequence[ShardStats]) -> dict[str, Any]:
    by_status: Counter = Counter()
    reasons: Counter = Counter()
    for s in stats:
        by_status.update(s.by_status)
        reasons.update(s.reasons)
    return {"shards": len(stats), "samples": sum(s.samples for s in stats), "written": sum(s.written for s in stats),
            "by_status": dict(sorted(by_status.items())), "reasons": dict(sorted(reasons.items()))}


def embed_shards(src: Path, out_root: Path, config: EmbedConfig, run: Runner = run_local) -> dict[str, Any]:
    """Embed every shard of ``src`` into ``out_root/<model_id>`` (skips shards already embedded)."""
    tasks, store = plan_embed_tasks(Path(src), Path(out_root), config)
    stats = run(tasks)
    return {"store": str(store), "model_id": store.name, **_totals(stats)}


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


def clean_shards(src: Path, scores: Path, decision: Decision | dict | str, out: Path, run: Runner = run_local,
                 excluded_out: Path | None = None) -> dict[str, Any]:
    """Decide from the score tables, write ``out/exclusions.parquet``, then the cleaned shards."""
    src, out = Path(src), Path(out)
    decision = decision if isinstance(decision, Decision) else parse_decision(decision)
    table = load_scores(Path(scores))
    unchecked = check_coverage(src, table)
    verdict = decision.decide(table)
    exclusions = exclusion_table(table, verdict)
    path = out / EXCLUSIONS_FILE
    if out.exists() and list_shards(out) and not path.exists():
        raise FileExistsError(f"{out} already holds shards that no clean wrote; use a fresh output folder")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staged:  # renamed into place only if it is the same decision (or the first)
        pq.write_table(exclusions, staged, compression="zstd")
        if path.exists() and file_digest(path) != file_digest(staged) and list_shards(out):
            raise FileExistsError(f"{out} holds shards cleaned by another decision; use a fresh output folder")
    stats = run(plan_clean_tasks(src, out, path, excluded_out))
    finalize_folder(out, stats)
    dropped = sum(c.dropped for s in stats for c in s.stages if c.stage == STAGE_NAME)
    skipped_any = any(not s.stages for s in stats)
    if not skipped_any and dropped != exclusions.num_rows:
        raise RuntimeError(f"{exclusions.num_rows} samples were to be excluded but the shards dropped {dropped}")
    if excluded_out is not None:
        finalize_folder(Path(excluded_out), [load_stats(Path(excluded_out), s.shard) for s in stats])
    report = {
        "decision": {"name": decision.kind, "params": decision.params.model_dump(mode="json")},
        "scores": str(scores),
        "samples": len(table),
        "live": int(table.live.sum()),
        "excluded": exclusions.num_rows,
        "by_rule": dict(sorted(Counter(r for r in exclusions.column("rule").to_pylist()).items())),
        "exclusions": str(path),
        "out": str(out),
        "excluded_out": str(excluded_out) if excluded_out is not None else None,
        "unchecked_shards": unchecked,
        "shards": _totals(stats),
    }
    write_clean_report(out, report)
    return report
