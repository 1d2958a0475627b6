"""The sample record that flows through every stage.

A sample maps one-to-one onto a WebDataset group: ``__key__``, one payload member (``.jpg`` for images,
but any registered extension for other modalities), ``.txt`` for the caption and ``.json`` for metadata.
The payload stays encoded: stages decode lazily, so samples that a stage does not touch are copied
byte for byte.

Samples that are dropped or errored keep flowing (with a reason) so the writer can record them in the
sidecar: nothing disappears silently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from typing import Any


class Status(str, Enum):
    """Where a sample stands after the stages that have seen it."""

    OK = "ok"  # unchanged so far
    CHANGED = "changed"  # modified by at least one stage
    ADDED = "added"  # created by a stage (e.g. targeted poisoning adds pairs)
    DROPPED = "dropped"  # removed on purpose by a filter, with a reason
    ERROR = "error"  # could not be read or processed, with a reason


LIVE_STATUSES = frozenset({Status.OK.value, Status.CHANGED.value, Status.ADDED.value})

# Reserved metadata keys (everything else in ``meta`` belongs to the data source):
#   "poisonlab"  : provenance written by stages that change a sample (attack name, parameters, ...)
#   "width", "height" : image size in pixels, kept in sync by stages that re-encode images
#   "source_status"   : status recorded by an upstream tool (e.g. img2dataset's "success")
RESERVED_META_KEYS = frozenset({"poisonlab", "width", "height", "source_status"})


@dataclasses.dataclass(frozen=True)
class Sample:
    """One record of a dataset: a stable key, an encoded payload, a caption and metadata."""

    key: str
    payload: bytes | None = None
    payload_ext: str = "jpg"
    text: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    status: str = Status.OK.value
    reason: str | None = None
    touched_by: tuple[str, ...] = ()

    @property
    def is_live(self) -> bool:
        """Live samples are processed by stages and written to the tar; others only to the sidecar."""
        return self.status in LIVE_STATUSES

    def changed(self, stage: str, **fields: Any) -> Sample:
        """Return a copy modified by ``stage``; added samples stay ``added``."""
        status = self.status if self.status == Status.ADDED.value else Status.CHANGED.value
        return dataclasses.replace(self, status=status, touched_by=self.touched_by + (stage,), **fields)

    def dropped(self, stage: str, reason: str) -> Sample:
        return dataclasses.replace(
            self, status=Status.DROPPED.value, reason=f"{stage}: {reason}", touched_by=self.touched_by + (stage,)
        )

    def errored(self, stage: str, reason: str) -> Sample:
        return dataclasses.replace(
            self, status=Status.ERROR.value, reason=f"{stage}: {reason}", touched_by=self.touched_by + (stage,)
        )

    def with_meta(self, **items: Any) -> Sample:
        merged = dict(self.meta)
        merged.update(items)
        return dataclasses.replace(self, meta=merged)
