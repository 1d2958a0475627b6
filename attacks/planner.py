"""Which samples each attack poisons: an exact, keyed plan over the whole dataset, made once in the driver.

Every eligible key is ranked by ``keyed_u64(seed, "<attack id>/select", key)`` and an attack takes the
``N`` smallest, so the choice depends on nothing but the seed, the attack id and the set of keys: not on
workers, shard order or reruns. Attacks of a recipe choose in order and never share a sample. Added
samples get keys ``<attack id>-NNNNNN`` and a keyed shard among the existing ones (appended after its
input samples), so training shuffles them with the rest of the data.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Sequence

from poisonlab.attacks.base import Attack, Candidate
from poisonlab.attacks.recipe import AttackEntry, RecipeError
from poisonlab.pipelines.keyed import keyed_u64


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """One shard's share of the plan: small, so every shard task carries only its own."""

    modified: tuple[tuple[str, str], ...] = ()  # (key, attack id), sorted by key
    added: tuple[tuple[str, str, int], ...] = ()  # (new key, attack id, copy index), in index order

    def __len__(self) -> int:
        return len(self.modified) + len(self.added)


def planned_count(entry: AttackEntry, total: int, attack_id: str) -> int:
    """``count`` exactly, or ``round(rate x total)`` with halves rounded up."""
    n = entry.count if entry.count is not None else int(math.floor((entry.rate or 0.0) * total + 0.5))
    if n > total:
        raise RecipeError(f"attack {attack_id!r}: count {n} is larger than the dataset ({total} live samples)")
    return n


def select(
    candidates: Sequence[Candidate],
    attack: Attack,
    names_target: Callable[[str | None], bool],
    n: int,
    seed: int,
    attack_id: str,
    taken: set[tuple[str, str]],
) -> list[Candidate]:
    """The ``n`` eligible samples with the smallest keyed ranks (not taken by an earlier attack)."""
    eligible = [c for c in candidates if (c.shard, c.key) not in taken and attack.eligible(c, names_target(c.caption))]
    if n > len(eligible):
        raise RecipeError(
            f"attack {attack_id!r} needs {n} samples but only {len(eligible)} are eligible"
            + (f" ({attack.eligibility})" if attack.eligibility else "")
        )
    salt = f"{attack_id}/select"
    return heapq.nsmallest(n, eligible, key=lambda c: (keyed_u64(seed, salt, c.key), c.shard, c.key))


def added_keys(attack_id: str, n: int, shards: Sequence[str], seed: int, existing: set[str]) -> list[tuple[str, str, int]]:
    """(shard, key, index) of each added sample: deterministic keys, keyed shards."""
    out = []
    for index in range(n):
        key = f"{attack_id}-{index:06d}"
        if key in existing:
            raise RecipeError(f"added key {key!r} already exists in the dataset; give the attack another id")
        out.append((shards[keyed_u64(seed, f"{attack_id}/shard", key) % len(shards)], key, index))
    return out


def shard_plans(
    shards: Sequence[str], modified: dict[str, list[Candidate]], added: dict[str, list[tuple[str, str, int]]]
) -> dict[str, ShardPlan]:
    """Regroup the per-attack choices by shard, in a canonical order."""
    mod: dict[str, list[tuple[str, str]]] = {s: [] for s in shards}
    add: dict[str, list[tuple[str, str, int]]] = {s: [] for s in shards}
    for attack_id, chosen in modified.items():
        for c in chosen:
            mod[c.shard].append((c.key, attack_id))
    for attack_id, items in added.items():
        for shard, key, index in items:
            add[shard].append((key, attack_id, index))
    return {s: ShardPlan(tuple(sorted(mod[s])), tuple(sorted(add[s]))) for s in shards}
