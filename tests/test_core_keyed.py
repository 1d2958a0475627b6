"""Keyed randomness: a pure function of (seed, stage, key, salt), whatever the order of calls."""

from __future__ import annotations

import random

import numpy as np

from poisonlab.pipelines.keyed import keyed_rng, keyed_u64, keyed_uniform

KEYS = [f"{i:09d}" for i in range(2000)]


def test_same_arguments_same_draws_in_any_order() -> None:
    forward = {k: keyed_uniform(3, "attack", k) for k in KEYS}
    shuffled = KEYS[:]
    random.Random(1).shuffle(shuffled)
    np.random.seed(12345)  # global generators must not matter
    random.seed(99)
    backward = {k: keyed_uniform(3, "attack", k) for k in shuffled}
    assert forward == backward
    a = keyed_rng(3, "attack", KEYS[7]).integers(0, 1000, size=20)
    np.random.random(100)
    b = keyed_rng(3, "attack", KEYS[7]).integers(0, 1000, size=20)
    assert a.tolist() == b.tolist()


def test_every_argument_changes_the_stream() -> None:
    base = keyed_u64(0, "stage", "key")
    variants = [keyed_u64(1, "stage", "key"), keyed_u64(0, "stage2", "key"), keyed_u64(0, "stage", "key2"),
                keyed_u64(0, "stage", "key", salt="x")]
    assert len({base, *variants}) == 5
    # fields are separated, so shifting text between them is a different call
    assert keyed_u64(0, "ab", "c") != keyed_u64(0, "a", "bc")


def test_uniform_is_uniform_enough_and_in_range() -> None:
    values = np.array([keyed_uniform(0, "s", k) for k in KEYS])
    assert values.min() >= 0.0 and values.max() < 1.0
    counts, _ = np.histogram(values, bins=10, range=(0, 1))
    assert counts.min() > 150 and counts.max() < 250  # 200 expected per bin
    assert abs(float(np.mean(values < 0.05)) - 0.05) < 0.02


def test_known_value_is_stable_across_versions() -> None:
    """A change to the derivation would silently change every poisoned set: pin one value."""
    assert keyed_u64(0, "synth/train", "000000000") == 0x69CFDEC92957CED9
