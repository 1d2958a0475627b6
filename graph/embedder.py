"""The ``graph_clip`` embedder: a graph run's ``graph`` and ``text`` spaces for the embedding store.

Registered like ``open_clip``; the embed step, the store and every detector (kNN ones with
``space=graph``, isolation forest, spectral) use it unchanged. Weights come from a graph run folder
(``weights``, which ``--run`` fills in), are read as safetensors only, and are loaded once per worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from poisonlab.filters.embedders import EMBEDDERS, Decoded, ModelEmbedder
from poisonlab.filters.store import file_digest
from poisonlab.pipelines.registry import Params
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.graphs import GRAPH_EXTENSIONS


class GraphClipEmbedderParams(Params):
    weights: str = Field(..., description="a graph run folder (`poisonlab train --objective graph_clip`); --run sets it")
    device: str | None = Field(None, description="cpu, cuda, cuda:1 (None: cuda when available)")


_LOADED: dict[tuple[str, str], Any] = {}


@EMBEDDERS.register("graph_clip", GraphClipEmbedderParams, summary="graph CLIP run: graph and description "
                    "embeddings (spaces graph, text)")
class GraphClipEmbedder(ModelEmbedder):
    """Graph and description embeddings from one trained graph CLIP."""

    spaces = ("graph", "text")
    payload_space = "graph"
    payload_extensions = GRAPH_EXTENSIONS
    params: GraphClipEmbedderParams

    def setup(self) -> None:
        """Load the run once per process (a per-process cache keyed by run folder and device)."""
        from poisonlab.graph.run import load_graph_run

        if self.loaded is None:
            key = (self.params.weights, self.device)
            if key not in _LOADED:
                _LOADED[key] = load_graph_run(self.params.weights, self.device)
            self.loaded = _LOADED[key]

    def dims(self) -> dict[str, int]:
        self.setup()
        spaces = self.spaces if self.loaded.model.has_text else ("graph",)
        return {space: self.loaded.cfg.embed_dim for space in spaces}

    def decode(self, sample: Sample) -> Decoded:
        from poisonlab.graph.codec import graph_arrays
        from poisonlab.training.objectives import SkipSample

        self.setup()
        out = Decoded({})
        if not self.accepts(sample.payload_ext):
            out.missing.append(f"no_graph: payload .{sample.payload_ext} is not a graph")
        else:
            try:
                out.inputs["graph"] = graph_arrays(sample.payload, self.loaded.cfg.in_features)
            except SkipSample as exc:
                out.missing.append(str(exc))
        if not self.loaded.model.has_text:
            return out  # a graph-only model writes no text space
        if sample.text and sample.text.strip():
            out.inputs["text"] = sample.text
        else:
            out.missing.append("no_caption")
        return out

    def embed(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        return self.embed_prepared(self.prepare(batch))

    def prepare(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """A PyG batch of the graphs and the captions' tokens (the embed step builds them ahead, in a thread)."""
        from poisonlab.graph.codec import to_batch

        self.setup()
        prepared: dict[str, Any] = {}
        if batch.get("graph"):
            prepared["graph"] = to_batch(list(batch["graph"]))
        if batch.get("text"):
            prepared["text"] = self.loaded.tokenizer(list(batch["text"]))
        return prepared

    def embed_prepared(self, prepared: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import torch

        self.setup()
        model = self.loaded.model
        encoders = {"graph": model.encode_graph, "text": model.encode_text}
        with torch.inference_mode():
            out = {space: encoders[space](inputs.to(self.device)) for space, inputs in prepared.items()}
        return {space: v.float().cpu().numpy().astype(np.float32) for space, v in out.items()}

    def identity(self) -> dict[str, Any]:
        from pathlib import Path

        from poisonlab.graph.run import read_graph_config
        from poisonlab.models.zoo import CHECKPOINT_NAME

        run = Path(self.params.weights)
        cfg = read_graph_config(run)
        weights = run / CHECKPOINT_NAME
        return {"arch": "graph_clip", "graph_cfg": cfg.to_dict() if cfg else None,
                "weights": "sha256:" + file_digest(weights) if weights.is_file() else str(run)}

    def label(self) -> str:
        return "graph_clip"

    def details(self) -> dict[str, Any]:
        self.setup()
        return {"arch": "graph_clip", "weights": self.params.weights, "embed_dim": self.loaded.cfg.embed_dim,
                "graph_cfg": self.loaded.cfg.to_dict()}
