"""Decoded shards kept in memory between the epochs of one in-process training run.

Every epoch of a run reads the same shards and decodes the same samples: on the built-in 20,000 pairs that
is about 5 s of each 65 s epoch, spent on one core while the other waits for the next batch. A run that reads
in its own process (``workers=0``) keeps each shard's outcome here, in reader order, for as long as the
decoded arrays fit the run's byte budget (``TrainSettings.cache_bytes``); later epochs replay it. The replay
yields exactly what reading would, skips included and counted at the same points of the stream, so batches,
their order and every number a run reports are unchanged. A shard that does not fit is read again each epoch.
DataLoader workers never hold one: which worker reads a shard changes every epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from poisonlab.pipelines.sample import Sample
from poisonlab.training.objectives import BatchCodec, SkipSample


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One live sample as the codec left it: its input, or the reason the codec skipped it."""

    key: str
    item: Any = None
    skip: str | None = None


Event = Decoded | str  # a live sample, or the reason a sample (or the shard) was passed over while reading


def decode(sample: Sample, codec: BatchCodec) -> Decoded:
    try:
        return Decoded(sample.key, codec.decode(sample))
    except SkipSample as exc:
        return Decoded(sample.key, skip=str(exc))


def item_bytes(item: Any) -> int:
    """What holding a decoded item costs: its arrays and strings (containers of them, recursively)."""
    if isinstance(item, np.ndarray | torch.Tensor):
        return int(item.nbytes)
    if isinstance(item, str | bytes):
        return len(item)
    if isinstance(item, tuple | list):
        return sum(item_bytes(part) for part in item)
    if isinstance(item, dict):
        return sum(item_bytes(part) for part in item.values())
    return 64


class DecodedShards:
    """What ``codec`` made of each fully read shard, while the decoded items fit ``budget`` bytes in all."""

    def __init__(self, codec: BatchCodec, budget: int) -> None:
        self.codec = codec
        self.budget = budget
        self.used = 0
        self._shards: dict[str, list[Event]] = {}

    def get(self, shard: str) -> list[Event] | None:
        return self._shards.get(shard)

    def through(self, shard: str, events: Iterable[Sample | str]) -> Iterable[Event]:
        """The shard's events: replayed when an earlier epoch kept them (``events`` is then never read),
        else ``events`` decoded on the way and kept if the whole shard fits."""
        kept = self._shards.get(shard)
        if kept is not None:
            return kept
        return self._keep(shard, (e if isinstance(e, str) else decode(e, self.codec) for e in events))

    def _keep(self, shard: str, events: Iterable[Event]) -> Iterator[Event]:
        kept: list[Event] | None = []
        size = 0
        for event in events:
            if kept is not None:
                size += item_bytes(event.item) + 64 if isinstance(event, Decoded) else 64
                if self.used + size > self.budget:
                    kept = None  # over the budget: this shard (and it alone) is read again next epoch
                else:
                    kept.append(event)
            yield event
        if kept is not None:
            self._shards[shard] = kept
            self.used += size
