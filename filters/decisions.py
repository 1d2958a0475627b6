"""Decisions: which samples to exclude, read from score tables (never recomputed), each with a reason.

Registered by name (``get_registry("decision")``): ``threshold`` (a score at or above a value),
``top_fraction`` (a removal budget: the highest-scoring fraction of the live samples) and ``rules``
(several per-detector rules, combined with any/all). Live samples a decision cannot judge (no embedding,
so no score) follow the explicit ``missing`` rule: excluded with their reason (default) or kept.
Non-live samples are not decided on: they are already out of the tar and stay in the sidecar.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from poisonlab.filters.scores import ScoreTable, key_ranks, ranking
from poisonlab.pipelines.registry import Params, get_registry

DECISIONS = get_registry("decision")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Per row of a score table: excluded or not, the rule that fired and the full reason."""

    excluded: np.ndarray  # bool
    rule: list[str | None]
    reason: list[str | None]

    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.excluded)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


class DecisionParams(Params):
    missing: Literal["exclude", "keep"] = Field(
        "exclude", description="live samples without a score (e.g. an image that did not decode): exclude or keep")


class Decision(ABC):
    kind: ClassVar[str]
    params: DecisionParams

    @abstractmethod
    def detectors(self) -> list[str]: ...

    @abstractmethod
    def flag(self, table: ScoreTable, judged: np.ndarray) -> tuple[np.ndarray, list[str | None], list[str | None]]:
        """Rows to exclude among ``judged`` rows, with a short rule and a reason for each."""

    def decide(self, table: ScoreTable) -> Verdict:
        columns = {name: table.column(name) for name in self.detectors()}
        scored = np.ones(len(table), bool)
        for values in columns.values():
            scored &= np.isfinite(values)
        judged = table.live & scored
        excluded, rule, reason = self.flag(table, judged)
        excluded = excluded & judged
        rule = [r if e else None for r, e in zip(rule, excluded, strict=True)]
        reason = [r if e else None for r, e in zip(reason, excluded, strict=True)]
        unscored = np.flatnonzero(table.live & ~scored)
        if self.params.missing == "exclude":
            for i in unscored.tolist():
                excluded[i] = True
                rule[i] = "no_score"
                missing = [n for n, v in columns.items() if not np.isfinite(v[i])]
                why = table.reasons[i] or f"not scored by {', '.join(missing)}"
                reason[i] = f"no_score: {why}"
        return Verdict(excluded, rule, reason)


class ThresholdParams(DecisionParams):
    detector: str = Field(..., description="score column")
    value: float = Field(..., description="exclude samples whose score is at or above this")


@DECISIONS.register("threshold", ThresholdParams)
class Threshold(Decision):
    """Exclude every sample whose score is at or above a value."""

    kind = "threshold"

    def __init__(self, params: ThresholdParams) -> None:
        self.params = params

    def detectors(self) -> list[str]:
        return [self.params.detector]

    def flag(self, table, judged):  # type: ignore[no-untyped-def]
        return _threshold(table, judged, self.params.detector, self.params.value)


def _threshold(table: ScoreTable, judged: np.ndarray, detector: str, value: float):  # type: ignore[no-untyped-def]
    scores = table.column(detector)
    hit = judged & (np.nan_to_num(scores, nan=-np.inf) >= value)
    rule = f"{detector} >= {value:g}"
    return hit, [rule if h else None for h in hit], [f"{rule}: score {_fmt(s)}" if h else None for h, s in zip(hit, scores, strict=True)]


class TopFractionParams(DecisionParams):
    detector: str = Field(..., description="score column")
    fraction: float = Field(..., gt=0, lt=1, description="removal budget: fraction of the live samples to exclude")


@DECISIONS.register("top_fraction", TopFractionParams)
class TopFraction(Decision):
    """Exclude the highest-scoring fraction of the live samples (a removal budget); ties broken by key."""

    kind = "top_fraction"

    def __init__(self, params: TopFractionParams) -> None:
        self.params = params

    def detectors(self) -> list[str]:
        return [self.params.detector]

    def flag(self, table, judged):  # type: ignore[no-untyped-def]
        return _top_fraction(table, judged, self.params.detector, self.params.fraction)


def budget_count(fraction: float, population: int) -> int:
    return min(population, math.ceil(fraction * population - 1e-9))


def top_rows(scores: np.ndarray, keys: list[str], candidates: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` candidate rows with the highest scores; equal scores are ordered by key."""
    if count <= 0 or not candidates.any():
        return np.zeros(0, np.int64)
    masked = np.where(candidates, scores, np.nan)
    order = ranking(masked, key_ranks(keys))
    return order[: min(count, int(candidates.sum()))]


def _top_fraction(table: ScoreTable, judged: np.ndarray, detector: str, fraction: float):  # type: ignore[no-untyped-def]
    scores = table.column(detector)
    population = int(table.live.sum())
    chosen = top_rows(scores, table.keys, judged, budget_count(fraction, population))
    hit = np.zeros(len(table), bool)
    hit[chosen] = True
    rank = {int(r): i + 1 for i, r in enumerate(chosen)}
    rule = f"{detector} top {fraction:g}"
    reasons = [f"{rule}: score {_fmt(scores[i])}, rank {rank[i]} of {population}" if hit[i] else None
               for i in range(len(table))]
    return hit, [rule if h else None for h in hit], reasons


class Rule(Params):
    detector: str
    threshold: float | None = None
    top_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Rule:
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError(f"rule on {self.detector!r}: give exactly one of threshold or top_fraction")
        return self


class RulesParams(DecisionParams):
    rules: list[Rule] = Field(..., min_length=1)
    combine: Literal["any", "all"] = Field("any", description="exclude when any rule fires, or only when all do")


@DECISIONS.register("rules", RulesParams)
class Rules(Decision):
    """Per-detector rules (threshold or budget each), combined with any or all."""

    kind = "rules"

    def __init__(self, params: RulesParams) -> None:
        self.params = params

    def detectors(self) -> list[str]:
        return list(dict.fromkeys(r.detector for r in self.params.rules))

    def flag(self, table, judged):  # type: ignore[no-untyped-def]
        fired = []
        for r in self.params.rules:
            if r.threshold is not None:
                fired.append(_threshold(table, judged, r.detector, r.threshold))
            else:
                fired.append(_top_fraction(table, judged, r.detector, r.top_fraction))
        hits = np.stack([f[0] for f in fired])
        hit = hits.any(axis=0) if self.params.combine == "any" else hits.all(axis=0)
        rules, reasons = [], []
        for i in range(len(table)):
            which = [j for j in range(len(fired)) if hits[j, i]] if hit[i] else []
            rules.append(" | ".join(fired[j][1][i] for j in which) if which else None)
            reasons.append(
                rules[-1] + ": " + ", ".join(fired[j][2][i].split(": ", 1)[1] for j in which) if which else None)
        return hit, rules, reasons


def parse_decision(spec: dict[str, Any] | str) -> Decision:
    """A decision from ``{"name": ..., **params}`` or a command-line spec (see ``filters.specs``)."""
    from poisonlab.filters.specs import parse_spec

    if isinstance(spec, str):
        _, name, params = parse_spec(spec)
    else:
        params = dict(spec)
        name = str(params.pop("name"))
    return DECISIONS.create(name, params)


def exclusion_table(table: ScoreTable, verdict: Verdict) -> pa.Table:
    """One row per excluded sample: key, shard, the rule, the reason, and every score."""
    rows = verdict.rows()
    arrays: dict[str, pa.Array] = {
        "key": pa.array([table.keys[i] for i in rows], pa.string()),
        "shard": pa.array(table.shards[rows].tolist(), pa.string()),
        "rule": pa.array([verdict.rule[i] for i in rows], pa.string()),
        "reason": pa.array([verdict.reason[i] for i in rows], pa.string()),
    }
    for name, values in table.columns.items():
        v = values[rows]
        arrays[name] = pa.array(v, pa.float64(), mask=~np.isfinite(v))
    return pa.table(arrays)
