"""Partition schemes: how the live samples of a shard folder are dealt to N federated clients.

Schemes are registered components (``get_registry("partition_scheme")``, listed by ``poisonlab components
partition_scheme``). Each maps ``LiveRows`` to one client id per row, and every choice is keyed randomness
(``pipelines.keyed``) over (seed, scheme, key or shard or class): rows are ranked by their keyed hash (the
key, then the shard, break ties), so the assignment never depends on the order in which shards were read.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
from pydantic import Field

from poisonlab.federated.rows import LiveRows
from poisonlab.pipelines.keyed import keyed_rng, keyed_u64
from poisonlab.pipelines.registry import Params, get_registry

SCHEMES = get_registry("partition_scheme")


class PartitionError(ValueError):
    """A partition that cannot be made from this input (no labels for dirichlet, fewer shards than clients)."""


class PartitionScheme(Protocol):
    label_column: str | None  # the sidecar column the scheme needs (None: labels are not read)

    def assign(self, rows: LiveRows, clients: int, seed: int) -> np.ndarray:
        """One client id in [0, clients) per row of ``rows``."""
        ...


def keyed_order(indices: np.ndarray, rows: LiveRows, seed: int, stage: str) -> np.ndarray:
    """``indices`` ranked by the keyed hash of their key (key and shard break ties): order-free."""
    keys, shards = rows.keys, rows.shard_of
    ranked = sorted(indices.tolist(), key=lambda i: (keyed_u64(seed, stage, keys[i]), keys[i], shards[i]))
    return np.asarray(ranked, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Iid:
    """Keyed hash of (seed, key) ranks the samples; rank r goes to client r mod N (sizes differ by <= 1)."""

    label_column: str | None = None

    def assign(self, rows: LiveRows, clients: int, seed: int) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        out[keyed_order(np.arange(len(rows)), rows, seed, "federated/iid")] = np.arange(len(rows)) % clients
        return out


class DirichletParams(Params):
    alpha: float = Field(0.5, gt=0, description="concentration: small = skewed label mixes, large = near iid")
    label_column: str = Field("label", description="the sidecar column holding each sample's class")


@dataclasses.dataclass(frozen=True)
class Dirichlet:
    """Per class, client shares drawn from Dirichlet(alpha) with a keyed generator (seed, class); the class's
    samples, in keyed order, are cut into consecutive runs of those sizes (Hsu et al. 2019's label skew)."""

    alpha: float
    label_column: str

    def _labels(self, rows: LiveRows) -> np.ndarray:
        missing = len(rows) if rows.labels is None else int(sum(v is None for v in rows.labels))
        if missing:
            raise PartitionError(
                f"dirichlet needs a class label per sample: {missing} of {len(rows)} live samples have no "
                f"{self.label_column!r} column in their sidecar (the generated dataset has 'label' and 'class'; "
                "pick one with --label-column, or use --scheme iid or by_shard)")
        return rows.labels  # type: ignore[return-value]

    def assign(self, rows: LiveRows, clients: int, seed: int) -> np.ndarray:
        labels = self._labels(rows)
        out = np.empty(len(rows), dtype=np.int64)
        for label in sorted(set(labels.tolist())):
            members = keyed_order(np.flatnonzero(labels == label), rows, seed, "federated/dirichlet")
            shares = keyed_rng(seed, "federated/dirichlet", f"class/{label}").dirichlet(np.full(clients, self.alpha))
            ends = np.round(np.cumsum(shares) * len(members)).astype(np.int64)
            ends[-1] = len(members)
            out[members] = np.searchsorted(ends, np.arange(len(members)), side="right")
        return out


@dataclasses.dataclass(frozen=True)
class ByShard:
    """Whole shards to clients: shards ranked by a keyed hash of (seed, shard name), dealt round robin
    (the natural split when each shard came from one source, e.g. one crawl domain or one device)."""

    label_column: str | None = None

    def assign(self, rows: LiveRows, clients: int, seed: int) -> np.ndarray:
        used = sorted(set(rows.shard_of.tolist()))
        if len(used) < clients:
            raise PartitionError(f"by_shard needs at least one shard per client: {len(used)} shard(s) with live "
                                 f"samples for {clients} clients")
        ranked = sorted(used, key=lambda s: (keyed_u64(seed, "federated/by_shard", s), s))
        client_of = {shard: i % clients for i, shard in enumerate(ranked)}
        return np.fromiter((client_of[s] for s in rows.shard_of), dtype=np.int64, count=len(rows))


@SCHEMES.register("iid", Params, summary="keyed hash of (seed, key) to clients, balanced to within one sample")
def iid(params: Params) -> Iid:
    return Iid()


@SCHEMES.register("dirichlet", DirichletParams, summary="label skew: per-class client shares from Dirichlet(alpha)")
def dirichlet(params: DirichletParams) -> Dirichlet:
    return Dirichlet(params.alpha, params.label_column)


@SCHEMES.register("by_shard", Params, summary="whole shards to clients, round robin in a keyed shard order")
def by_shard(params: Params) -> ByShard:
    return ByShard()
