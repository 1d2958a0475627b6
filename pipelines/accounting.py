"""Per-shard accounting: every stage records in = kept + changed + dropped + errored (plus samples it added)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any


@dataclasses.dataclass
class StageCounts:
    """What one stage did on one shard: inputs = kept + changed + dropped + errored; added are new samples."""

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
