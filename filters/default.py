"""``default``: the detector a user gets without knowing the attack, its rate or its trigger.

A rank-normalised combination of ingredients that each need no such knowledge, every one of them also a
registered detector of its own:

* ``kdist_subsets`` (``filters/subsets.py``): image k-distance among keyed random reference subsets,
  sized so that a trigger cluster of any rate up to 2 % is outnumbered: image-side backdoors (badnets,
  blended, wanet, ...) at any plausible rate;
* ``phrase_burst`` (``filters/phrases.py``): a caption token that alone explains the image while the
  rest of the caption does not: caption-side backdoors (``text_trigger``), invisible to the image side;
* ``kdist`` at k = 16 over the whole dataset: the fine scale the subsets lose (a few hundred references
  resolve clusters, not a point slightly off its class), for triggers that make images sparse without
  making them one cluster (a blended noise pattern the model has not learned: AUROC 0.84 alone).

The ingredients see different attacks, so the combination is ``rank_max`` by default: a sample is as
suspicious as its most suspicious ingredient says, and an attack one ingredient cannot see is not diluted
by that ingredient's noise (``rank_mean`` would halve it). The measurements behind this choice are in
``benchmarks/results/2026-12-03-default-detector.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from poisonlab.filters.context import ScanContext
from poisonlab.filters.detectors import DETECTORS, Detector
from poisonlab.filters.ranks import RankMethod, combine_ranks
from poisonlab.filters.specs import parse_spec
from poisonlab.pipelines.registry import Params

DEFAULT_INGREDIENTS: tuple[str, ...] = ("kdist_subsets", "phrase_burst", "kdist:k=16")


class DefaultParams(Params):
    detectors: list[str | dict[str, Any]] = Field(
        list(DEFAULT_INGREDIENTS), min_length=1,
        description="ingredients: detector specs (name:key=value or a JSON object with a name)")
    method: RankMethod = Field("rank_max", description="how the ingredients' ranks are combined")
    weights: list[float] | None = Field(None, description="rank_mean: one weight per ingredient")


def ingredient(spec: str | dict[str, Any]) -> Detector:
    """A registered detector from a spec string or object (validated like any other detector)."""
    if isinstance(spec, dict):
        raw = dict(spec)
        name = str(raw.pop("name", ""))
        raw.pop("column", None)
    else:
        _, name, raw = parse_spec(spec)
    component = DETECTORS.get(name)
    detector = component.create(component.parse(raw))
    if detector.uses:
        raise ValueError(f"default: {name!r} combines score columns; name it as its own detector instead")
    return detector


@DETECTORS.register("default", DefaultParams)
class DefaultDetector(Detector):
    """The rate-, attack- and trigger-free default: the rank maximum of ``kdist_subsets``, ``phrase_burst``
    and ``kdist`` at k = 16 (module docstring says why these and why ``rank_max``)."""

    def __init__(self, params: DefaultParams) -> None:
        if params.weights is not None and len(params.weights) != len(params.detectors):
            raise ValueError("default: give one weight per ingredient")
        self.params = params
        self.parts = [ingredient(spec) for spec in params.detectors]

    def reads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(space for part in self.parts for space in part.reads()))

    def plan(self, ctx: ScanContext, model: str) -> None:
        for part in self.parts:
            part.plan(ctx, model)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        return combine_ranks([part.score(ctx, model) for part in self.parts], self.params.method, self.params.weights)
