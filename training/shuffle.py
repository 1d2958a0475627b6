"""The keyed shuffle buffer of the training stream.

The algorithm is WebDataset's ``shuffle`` filter, step for step (same buffer fill, same ``randint`` draws),
so runs keep the batch order they had when the stream was a WebDataset pipeline; only the generator is
ours: seeded from (seed, epoch, worker), never from the clock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

from poisonlab.pipelines.keyed import keyed_u64

SHUFFLE_STAGE = "train/shuffle"
T = TypeVar("T")


def shuffle_rng(seed: int, epoch: int, worker: int) -> random.Random:
    return random.Random(keyed_u64(seed, SHUFFLE_STAGE, f"{epoch}/{worker}"))


def _pick(buf: list[T], rng: random.Random) -> T:
    k = rng.randint(0, len(buf) - 1)
    item = buf[k]
    buf[k] = buf[-1]
    buf.pop()
    return item


def buffer_shuffle(items: Iterable[T], bufsize: int, rng: random.Random) -> Iterator[T]:
    """Yield ``items`` through a buffer of ``bufsize``; it starts yielding once half full."""
    data = iter(items)
    initial = min(bufsize, max(1, bufsize // 2))
    buf: list[T] = []
    for item in data:
        buf.append(item)
        if len(buf) < bufsize:
            try:
                buf.append(next(data))
            except StopIteration:
                pass
        if len(buf) >= initial:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)
