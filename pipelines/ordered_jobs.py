"""Run a stream's expensive items in a few threads while everything keeps its order.

A shard stage that decodes and re-encodes images spends most of its time in Pillow's codecs, which run
without the GIL; the rest of the shard task (reading members, writing the tar, sidecars) is Python. Handing
each expensive item to a small pool lets both cores work while the stream stays one ordered iterator: an
item is yielded only after every item before it, so what is written, and every byte of it, is the same as
running the stream in one thread. At most ``window`` items are in flight (bounded memory), and a consumer
that stops early cancels what has not started and waits for what has. The embed step runs model batches
the same way (a torch forward pass also runs without the GIL). How many threads a task may use is what its
runner lends (``lend_cpus``): the in-process runner lends the machine's CPUs, a Dask worker lends none.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

R = TypeVar("R")

MAX_CODEC_THREADS = 4  # past a few threads the codecs only queue for the GIL their Python parts need


class Job(Generic[R]):
    """Work that ``in_order`` runs in a pool thread: ``fn(*args)``, whose result takes the job's place."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., R], *args: object) -> None:
        self.fn = fn
        self.args = args

    def __call__(self) -> R:
        return self.fn(*self.args)


_LENT_CPUS: ContextVar[int] = ContextVar("lent_cpus", default=1)


def lent_cpus() -> int:
    """CPUs a shard task here may keep busy on its own: 1 unless its runner lent it the machine's."""
    return _LENT_CPUS.get()


def codec_threads() -> int:
    """Threads for a task's image codecs: one more than the lent CPUs (at most ``MAX_CODEC_THREADS``).

    A codec thread often waits for the GIL to run Pillow's Python parts, and the spare thread keeps the
    core busy meanwhile (on 2 cores, 3 threads poisoned 2,000 JPEGs about 5 % faster than 2).
    """
    lent = lent_cpus()
    return 1 if lent < 2 else min(MAX_CODEC_THREADS, lent + 1)


@contextmanager
def lend_cpus() -> Iterator[None]:
    """Let shard tasks run in this context use every CPU this process may run on.

    Only a runner that runs one task at a time on the whole machine (the in-process one) lends them: a Dask
    worker already shares the machine's cores with its siblings, one task each, and keeps to one.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    token = _LENT_CPUS.set(max(1, usable))
    try:
        yield
    finally:
        _LENT_CPUS.reset(token)


def in_order(items: Iterator[R | Job[R]], threads: int, window: int | None = None,
             name: str = "poisonlab-codec", executor: Executor | None = None) -> Iterator[R]:
    """Yield each item, or each ``Job``'s result, in the order they came; jobs run in ``threads`` threads.

    With one thread the jobs run here, one after another. A job's exception is raised where its result
    would have been yielded. ``name`` prefixes the threads' names. An ``executor`` the caller owns (a
    process pool: its jobs must pickle) runs the jobs instead of threads started here, and is left running.
    """
    if executor is not None:
        yield from _ordered(items, executor, window or 4 * threads)
        return
    if threads <= 1:
        for item in items:
            yield item() if isinstance(item, Job) else item
        return
    with ThreadPoolExecutor(threads, thread_name_prefix=name) as pool:
        yield from _ordered(items, pool, window or 4 * threads)


def _ordered(items: Iterator[R | Job[R]], pool: Executor, window: int) -> Iterator[R]:
    """``in_order`` over ``pool``: at most ``window`` items in flight; what has not started is cancelled when
    the consumer stops early."""
    pending: deque[Future[R] | R] = deque()
    try:
        for item in items:
            pending.append(pool.submit(item) if isinstance(item, Job) else item)
            while len(pending) > window or (pending and _ready(pending[0])):
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        for left in pending:
            if isinstance(left, Future):
                left.cancel()


def _ready(item: object) -> bool:
    return not isinstance(item, Future) or item.done()


def _result(item: Future[R] | R) -> R:
    return item.result() if isinstance(item, Future) else item
