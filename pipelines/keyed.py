"""Keyed randomness: every random decision is a function of (seed, stage name, sample key).

No global generator is ever consulted, so outputs do not depend on the number of workers, the order in
which shards are processed, or on reruns.
"""

from __future__ import annotations

import hashlib

import numpy as np

_U64 = float(2**64)


def _digest(seed: int, stage: str, key: str, salt: str = "") -> bytes:
    text = f"{int(seed)}\x00{stage}\x00{key}\x00{salt}".encode()
    return hashlib.blake2b(text, digest_size=16).digest()


def keyed_u64(seed: int, stage: str, key: str, salt: str = "") -> int:
    """A 64-bit integer that is a pure function of its arguments (used to rank keys for exact counts)."""
    return int.from_bytes(_digest(seed, stage, key, salt)[:8], "big")


def keyed_uniform(seed: int, stage: str, key: str, salt: str = "") -> float:
    """A float in [0, 1) that is a pure function of its arguments."""
    return keyed_u64(seed, stage, key, salt) / _U64


def keyed_rng(seed: int, stage: str, key: str, salt: str = "") -> np.random.Generator:
    """A numpy generator seeded from (seed, stage, key): draw as much as needed for one sample."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(_digest(seed, stage, key, salt), "big")))
