"""An embedder whose decoding kills its process on one key: what a decoder crashing on a hostile payload does
to an input process (``tests/test_filters_pipeline.py``). Its own module, so a spawned worker imports only it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from poisonlab.filters.embedders import Decoded, Embedder
from poisonlab.pipelines.registry import Params
from poisonlab.pipelines.sample import Sample


class CrashParams(Params):
    crash_key: str | None = None


class CrashingEmbedder(Embedder):
    spaces = ("size",)
    payload_extensions = frozenset({"jpg"})
    decodes_in_processes = True
    params: CrashParams

    def dims(self) -> dict[str, int]:
        return {"size": 1}

    def decode(self, sample: Sample) -> Decoded:
        if sample.key == self.params.crash_key:
            os._exit(3)  # no exception, no cleanup: the process is gone
        return Decoded({"size": len(sample.payload or b"")})

    def embed(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        return {"size": np.asarray(batch["size"], np.float32).reshape(-1, 1)}

    def identity(self) -> dict[str, Any]:
        return {"crash_key": self.params.crash_key}
