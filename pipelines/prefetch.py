"""Run an iterator ahead in a background thread, so reading and decoding overlap a model's forward pass.

A model's large operations (matrix products, attention) release the GIL; shard parsing, image decoding
and tokenising can use that time. The producer stays at most ``depth`` items ahead (bounded memory), its
exceptions are raised in the consumer where they would have been raised without the thread, and a
consumer that stops early (an exception, a ``break``) stops the producer before returning: no thread is
left behind holding a file open.

Only the order in which the CPU does the work changes: the items, and everything computed from them, are
the same as iterating in one thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()
_POLL_S = 0.1  # how often a blocked producer checks whether the consumer has gone


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterator[T], depth: int = 2, name: str = "prefetch") -> Iterator[T]:
    """Yield ``items`` in order while a thread computes up to ``depth`` of them ahead."""
    if depth < 1:
        raise ValueError("depth must be >= 1")
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(_Failure(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's own cleanup (an open shard) runs now, in its thread
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
