"""The federated recipe: data, partition, malicious clients, rounds and the aggregators compared.

One YAML file (``poisonlab federate train RECIPE.yaml --out DIR``) says everything a federated run does, so
the same recipe gives the same global weights on any executor. Every aggregator listed runs the same rounds
from the same start on the same (possibly poisoned) partitions, each in ``DIR/runs/<id>/``; the report
compares them side by side.

    name: federated_badnets
    data: {synth: {samples: 4000}}            # or {shards: PATH, eval: PATH}
    partition: {clients: 10, scheme: iid}
    malicious: {clients: [0, 1], attack: {attack: badnets, target: red circle, rate: 0.5}}
    rounds: 10
    clients_per_round: 4
    local_steps: 10
    train: {model: poisonlab-tiny-32, batch_size: 32, lr: 0.0005}
    aggregators: [{name: fedavg}, {name: median}, {name: fedavg, id: inspect_fedavg, inspection: {}}]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from poisonlab.attacks.recipe import AttackEntry
from poisonlab.training.config import TrainSettings


class FederatedRecipeError(ValueError):
    """A federated recipe that cannot be run (reported as one line before any work)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthData(_Strict):
    samples: int = Field(4000, ge=100)
    image_size: int = Field(32, ge=8, le=1024)
    samples_per_shard: int = Field(500, ge=10)
    eval_per_class: int = Field(10, ge=2)


class DataSpec(_Strict):
    """Generate the built-in dataset, or use shard folders (relative paths: from the recipe's folder)."""

    synth: SynthData | None = None
    shards: str | None = None
    eval: str | None = Field(None, description="labelled evaluation split with classes.json (default SHARDS/eval)")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.synth is None) == (self.shards is None):
            raise ValueError("data: give exactly one of 'synth' or 'shards'")
        return self


class PartitionSpec(_Strict):
    clients: int = Field(10, ge=1)
    scheme: str = "iid"
    params: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0


class MaliciousSpec(_Strict):
    """Which clients are malicious and what they do: poison their partitions (``attack``), scale their
    update (``boost``: model replacement; ``norm_bound``: constrain-and-scale), or both."""

    clients: tuple[int, ...] = ()
    attack: AttackEntry | None = None
    boost: float | None = Field(None, gt=0, description="scale of a malicious delta (n / eta replaces fedavg)")
    norm_bound: float | None = Field(None, gt=0, description="project the boosted delta onto this L2 ball")

    @model_validator(mode="after")
    def _something_to_do(self) -> MaliciousSpec:
        if self.clients and self.attack is None and self.boost is None:
            raise ValueError("malicious: clients given but neither 'attack' nor 'boost'")
        if (self.attack is not None or self.boost is not None) and not self.clients:
            raise ValueError("malicious: 'attack'/'boost' given but no 'clients'")
        return self


class InspectionSpec(_Strict):
    """Exclude flagged clients before aggregating: a client is flagged when its ``score`` exceeds
    ``ratio`` times the median score of the round's clients (no oracle: the manifest is never read)."""

    score: Literal["norm", "cosine", "eminspector"] = "eminspector"
    ratio: float = Field(2.0, gt=1.0)


class AggregatorSpec(_Strict):
    name: str
    id: str | None = Field(None, description="run name (default: the aggregator's name)")
    params: dict[str, Any] = Field(default_factory=dict)
    inspection: InspectionSpec | None = None
    honest_only: bool = Field(False, description="leave the malicious clients out entirely (the no-attack reference)")

    @property
    def label(self) -> str:
        return self.id or self.name

    @model_validator(mode="after")
    def _registered(self) -> AggregatorSpec:
        # the rule and its parameters, checked up front
        from poisonlab.federated.aggregators import AGGREGATORS
        from poisonlab.pipelines.registry import RegistryError

        try:
            AGGREGATORS.get(self.name).parse(self.params)
        except RegistryError as exc:
            raise ValueError(" ".join(str(exc).split())) from None
        return self


class ProbeSpec(_Strict):
    images: int = Field(64, ge=2, description="clean images of the eval split each client's encoder embeds")


class FederatedRecipe(_Strict):
    name: str = "federated"
    seed: int = 0
    data: DataSpec
    partition: PartitionSpec = PartitionSpec()
    malicious: MaliciousSpec = MaliciousSpec()
    start: str | None = Field(None, description="run folder (or open_clip local-dir) to continue; none: scratch")
    rounds: int = Field(10, ge=1)
    clients_per_round: int = Field(4, ge=1)
    local_steps: int = Field(10, ge=1, description="optimiser steps of each client's local update")
    server_lr: float = Field(1.0, gt=0)
    train: TrainSettings = TrainSettings()
    aggregators: tuple[AggregatorSpec, ...] = Field(..., min_length=1)
    probe: ProbeSpec = ProbeSpec()
    evaluate_every: int = Field(1, ge=1, description="evaluate the global model every N rounds (and the last)")

    @model_validator(mode="after")
    def _consistent(self) -> FederatedRecipe:
        if self.clients_per_round > self.partition.clients:
            raise ValueError(f"clients_per_round {self.clients_per_round} > clients {self.partition.clients}")
        bad = [c for c in self.malicious.clients if not 0 <= c < self.partition.clients]
        if bad:
            raise ValueError(f"malicious clients {bad} are not among clients 0..{self.partition.clients - 1}")
        labels = [a.label for a in self.aggregators]
        if len(set(labels)) != len(labels):
            raise ValueError(f"aggregator ids must be unique, got {labels} (give 'id')")
        return self

    def aggregator(self, label: str) -> AggregatorSpec:
        return next(a for a in self.aggregators if a.label == label)


def _explain(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'recipe'}: {e['msg']}" for e in exc.errors(include_url=False))


def parse_federated_recipe(data: Any, where: str = "recipe") -> FederatedRecipe:
    try:
        return FederatedRecipe.model_validate(data)
    except ValidationError as exc:
        raise FederatedRecipeError(f"invalid {where}: {_explain(exc)}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (dotted keys, YAML values), e.g. ``rounds=3`` or ``train.lr=0.001``."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FederatedRecipeError(f"--set {item!r}: expected KEY=VALUE (e.g. rounds=3)")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def _apply(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise FederatedRecipeError(f"--set {dotted}: {part!r} is not a section of the recipe")
        node = child
    node[last] = value


def load_federated_recipe(path: Path, overrides: dict[str, Any] | None = None) -> FederatedRecipe:
    """Read a YAML recipe (safe loader only), apply dotted overrides; errors are one line naming the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FederatedRecipeError(f"cannot read recipe {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise FederatedRecipeError(f"recipe {path} is not a mapping of sections")
    for key, value in (overrides or {}).items():
        _apply(data, key, value)
    return parse_federated_recipe(data, where=f"recipe {path}")
