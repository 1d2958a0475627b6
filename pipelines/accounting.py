"""Per-shard accounting: nothing is lost without a trace.

Every stage records, per shard, in = kept + changed + dropped + errored, plus the samples it added. The
executor records what the source yielded as the first entry (``SOURCE``), so a shard's books close
when its sidecar holds one row per sample read plus one per sample added.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from typing import Any

SOURCE = "source"  # name of the StageCounts entry that counts what the shard's source yielded


def reason_category(reason: str) -> str:
    """'stage: kind: details' -> 'stage: kind', so stats count kinds of failure, not unique messages."""
    parts = [p.strip() for p in reason.split(";")[0].split(":")]
    return ": ".join(parts[:2])


@dataclasses.dataclass
class StageCounts:
    """What one stage did on one shard: inputs = kept + changed + dropped + errored; added are new samples.

    For the ``SOURCE`` entry, ``inputs`` is what was read and kept/dropped/errored their state as read.
    """

    stage: str
    inputs: int = 0
    added: int = 0
    kept: int = 0
    changed: int = 0
    dropped: int = 0
    errored: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)

    @property
    def balanced(self) -> bool:
        return self.inputs == self.kept + self.changed + self.dropped + self.errored

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["reasons"] = dict(sorted(self.reasons.items()))
        return data


@dataclasses.dataclass
class ShardStats:
    """Totals for one output shard, written as ``{shard:05d}_stats.json`` (the completion marker)."""

    shard: str
    source: str | None = None
    samples: int = 0  # rows in the sidecar
    written: int = 0  # samples in the tar
    by_status: Counter = dataclasses.field(default_factory=Counter)
    reasons: Counter = dataclasses.field(default_factory=Counter)
    stages: list[StageCounts] = dataclasses.field(default_factory=list)
    shard_errors: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def expected_rows(self) -> int | None:
        """Samples read plus samples added by stages; None when the source was not counted."""
        if not self.stages or self.stages[0].stage != SOURCE:
            return None
        return self.stages[0].inputs + sum(s.added for s in self.stages[1:])

    def accounting_problems(self) -> list[str]:
        """Why the books do not close (empty when every sample is accounted for)."""
        problems = [f"stage {s.stage!r}: {s.inputs} in != {s.kept} kept + {s.changed} changed + "
                    f"{s.dropped} dropped + {s.errored} errored" for s in self.stages if not s.balanced]
        if sum(self.by_status.values()) != self.samples:
            problems.append(f"statuses count {sum(self.by_status.values())} samples, the sidecar {self.samples}")
        expected = self.expected_rows()
        if expected is not None and expected != self.samples:
            problems.append(f"{expected} samples read or added, but {self.samples} rows in the sidecar")
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "source": self.source,
            "samples": self.samples,
            "written": self.written,
            "by_status": dict(sorted(self.by_status.items())),
            "reasons": dict(sorted(self.reasons.items())),
            "stages": [s.to_dict() for s in self.stages],
            "shard_errors": list(self.shard_errors),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardStats:
        stages = []
        for s in data.get("stages", []):
            s = dict(s)
            s["reasons"] = Counter(s.get("reasons", {}))
            stages.append(StageCounts(**s))
        return cls(
            shard=data["shard"],
            source=data.get("source"),
            samples=data.get("samples", 0),
            written=data.get("written", 0),
            by_status=Counter(data.get("by_status", {})),
            reasons=Counter(data.get("reasons", {})),
            stages=stages,
            shard_errors=list(data.get("shard_errors", [])),
        )


JSONValue = Any  # a small JSON-able value: None, bool, number, str, list or dict of them


@dataclasses.dataclass
class ShardResult:
    """What one shard task hands back: its stats, whether it was skipped, and an optional small result.

    ``result`` is for what a job needs beside the counts (a federated client's metrics, a path); it must
    be JSON-able so every runner (in-process, Prefect on Dask) carries it the same way.
    """

    stats: ShardStats
    skipped: bool = False
    result: JSONValue = None

    def to_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.to_dict(), "skipped": self.skipped, "result": self.result}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardResult:
        return cls(ShardStats.from_dict(data["stats"]), bool(data.get("skipped")), data.get("result"))


def stats_of(results: Iterable[ShardResult]) -> list[ShardStats]:
    """The stats of each shard result, in order."""
    return [r.stats for r in results]


def shard_totals(stats: Iterable[ShardStats]) -> dict[str, Any]:
    """Shards, sidecar rows, written samples, statuses and failure kinds over a set of shards.

    The one place totals are computed, so every command reports its shards the same way.
    """
    shards = samples = written = 0
    by_status: Counter = Counter()
    reasons: Counter = Counter()
    for s in stats:
        shards, samples, written = shards + 1, samples + s.samples, written + s.written
        by_status.update(s.by_status)
        reasons.update(s.reasons)
    return {"shards": shards, "samples": samples, "written": written,
            "by_status": dict(sorted(by_status.items())), "reasons": dict(sorted(reasons.items()))}
