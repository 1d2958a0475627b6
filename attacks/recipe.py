"""Recipes: one or several attacks, with their rates or counts, targets and parameters, in one YAML file.

    seed: 0
    attacks:
      - attack: badnets
        target: red circle
        rate: 0.005            # or count: 100
        params: {pattern: checkerboard, placement: bottom_right}

The command line builds the same structure from ``--attack/--rate/--count/--target/--param``, so both
paths go through one validation: unknown attacks or parameters, rates outside [0, 1] and malformed
entries are errors before any shard is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from poisonlab.attacks.base import ATTACK_ID_RE, Attack
from poisonlab.attacks.components import ATTACKS
from poisonlab.pipelines.registry import RegistryError


class RecipeError(ValueError):
    """A malformed recipe or option (rate out of range, both rate and count, a bad id, ...)."""


class AttackEntry(BaseModel):
    """One attack of a recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attack: str
    id: str | None = Field(None, description="unique name in the run (default: the attack name)")
    target: str | None = None
    rate: float | None = Field(None, ge=0.0, le=1.0, description="fraction of the dataset: round(rate x total)")
    count: int | None = Field(None, ge=0, description="exact number of samples poisoned (or added)")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rate_or_count(self) -> AttackEntry:
        if (self.rate is None) == (self.count is None):
            raise ValueError(f"attack {self.attack!r}: give exactly one of rate or count")
        if self.id is not None and not ATTACK_ID_RE.match(self.id):
            raise ValueError(f"attack id {self.id!r} must match {ATTACK_ID_RE.pattern}")
        return self


class Recipe(BaseModel):
    """A seed and the attacks to run, in order (earlier attacks choose their samples first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    attacks: tuple[AttackEntry, ...] = Field(..., min_length=1)

    def ids(self) -> list[str]:
        """Ids as given, else the attack name, numbered when an attack appears more than once."""
        seen: dict[str, int] = {}
        out = []
        for entry in self.attacks:
            base = entry.id or entry.attack
            seen[base] = seen.get(base, 0) + 1
            out.append(base if seen[base] == 1 or entry.id else f"{base}-{seen[base]}")
        if len(set(out)) != len(out):
            raise RecipeError(f"attack ids must be unique, got {out}")
        return out


@dataclasses.dataclass(frozen=True)
class ConfiguredAttack:
    """A recipe entry with its attack component created (parameters validated)."""

    id: str
    entry: AttackEntry
    attack: Attack


def _explain(exc: ValidationError) -> str:
    """One line per innermost problem ("attacks.0.rate: Input should be less than or equal to 1")."""
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    inner = [e for e, loc in zip(errors, locs, strict=True) if not any(o != loc and o[: len(loc)] == loc for o in locs)]
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'recipe'}: {e['msg']}" for e in inner)


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"invalid {where}: {_explain(exc)}") from exc


def load_recipe(path: Path) -> Recipe:
    """Read a YAML recipe (safe loader only)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    return parse_recipe(data, where=f"recipe {path}")


def parse_param(item: str) -> tuple[str, Any]:
    """``k=v`` with ``v`` read as YAML, so ``size_px=4``, ``augment=true`` and ``colour=[255,0,0]`` type right."""
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
        raise RecipeError(f"--param {item!r}: expected NAME=VALUE")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"--param {item!r}: cannot parse the value: {exc}") from exc
    return name.strip(), parsed


def recipe_from_options(
    attack: str, target: str | None, rate: float | None, count: int | None, seed: int, params: Sequence[str] = ()
) -> Recipe:
    """The one-attack recipe the ``poison`` command line describes."""
    parsed: dict[str, Any] = {}
    for item in params:
        name, value = parse_param(item)
        if name in parsed:
            raise RecipeError(f"--param {name} given twice")
        parsed[name] = value
    entry = {"attack": attack, "target": target, "rate": rate, "count": count, "params": parsed}
    return parse_recipe({"seed": seed, "attacks": [entry]}, where="options")


def configure(recipe: Recipe) -> list[ConfiguredAttack]:
    """Create every attack of the recipe: unknown names or parameters raise ``RegistryError`` here."""
    out = []
    for attack_id, entry in zip(recipe.ids(), recipe.attacks, strict=True):
        component = ATTACKS.get(entry.attack)
        try:
            attack = component.create(entry.params)
        except RegistryError:
            raise
        except (ValueError, TypeError) as exc:
            raise RegistryError(f"invalid parameters for attack {entry.attack!r}: {exc}") from exc
        out.append(ConfiguredAttack(attack_id, entry, attack))
    return out
