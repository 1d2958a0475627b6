"""Content-hash verification: the defence against split-view poisoning (Carlini et al., 2023).

A URL list made at collection time records a hash of each image; whoever controls the domain later
(an expired domain is cheap to buy) can serve different bytes to every downloader after that. Ingest
records the hash of the bytes it downloaded (before img2dataset resizes or re-encodes them) next to
the expected one, and this stage turns every disagreement into a ``hash_mismatch`` row: the sample is
not written, but its sidecar row keeps both hashes.

The trade-off: a host that legitimately re-encoded or resized an image since collection fails
verification exactly like an attacker, so a verified dataset loses those images too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import ShardContext, Stage

HASH_MISMATCH = "hash_mismatch"  # a sidecar status of its own, so that `poisonlab stats` can count it


class VerifyHashParams(Params):
    hash_type: Literal["md5", "sha256", "sha512"] = Field("sha256", description="the hash the URL list holds")


class VerifyHash(Stage):
    """Refuse samples whose downloaded bytes do not match the URL list's hash (status hash_mismatch)."""

    name = "verify_hash"

    def __init__(self, params: VerifyHashParams) -> None:
        self.hash_type = params.hash_type

    def process(self, samples: Iterator[Sample], ctx: ShardContext) -> Iterator[Sample]:
        expected_key, download_key = f"expected_{self.hash_type}", f"download_{self.hash_type}"
        for sample in samples:
            expected = sample.meta.get(expected_key)
            if not sample.is_live or expected is None:
                yield sample
                continue
            got = sample.meta.get(download_key)
            if got is None:
                yield sample.errored(self.name, f"no_download_hash: cannot verify without the {self.hash_type} of the download")
            elif got != expected:
                yield dataclasses.replace(
                    sample, status=HASH_MISMATCH, payload=None, touched_by=sample.touched_by + (self.name,),
                    reason=f"{self.name}: {HASH_MISMATCH}: expected {self.hash_type} {expected}, downloaded {got}",
                )
            else:
                yield sample


get_registry("stage").register("verify_hash", VerifyHashParams)(VerifyHash)

__all__ = ["HASH_MISMATCH", "VerifyHash", "VerifyHashParams"]
