"""The read-ahead thread: same items in the same order, the producer's errors raised in the consumer, and
nothing left running when the consumer stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from poisonlab.pipelines.prefetch import prefetched


def test_items_come_in_order_and_the_producer_stays_a_bounded_distance_ahead() -> None:
    made: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(50):
            made.append(i)
            yield i

    seen = []
    for item in prefetched(numbers(), depth=3):
        seen.append(item)
        assert len(made) <= len(seen) + 3 + 1  # the queue's depth, and one item in the producer's hands
    assert seen == list(range(50))


def test_an_error_in_the_producer_is_raised_in_the_consumer_after_the_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("shard truncated")

    seen = []
    with pytest.raises(OSError, match="shard truncated"):
        for item in prefetched(failing()):
            seen.append(item)
    assert seen == [1, 2]


def test_a_consumer_that_stops_early_stops_the_producer_and_closes_its_iterator() -> None:
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = threading.active_count()
    stream = prefetched(endless(), depth=2, name="test-prefetch")
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # what a `break` or an exception in the consumer does
    assert closed.is_set()
    assert threading.active_count() == before
    assert not any(t.name == "test-prefetch" for t in threading.enumerate())


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetched(iter([1]), depth=0))
