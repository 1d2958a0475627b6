"""Graph samples as model input: the safe ``.npz`` decoder, then torch_geometric's ``Batch``.

Like the image codec, it runs in the DataLoader workers and never holds the model: ``decode`` reads one
sample's ``edge_index`` and ``x`` through ``poisonlab.shards.graphs.decode_graph`` (caps checked from the
headers, nothing unpickled) and ``collate`` joins a batch of graphs into one disconnected ``Batch`` (node
features stacked, edge indices offset, a ``batch`` vector naming each node's graph), which the loop moves
to the device like any tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from poisonlab.models.tokens import TokenCache
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.graphs import GraphCaps, GraphError, decode_graph
from poisonlab.training.objectives import SkipSample

GraphItem = tuple[np.ndarray, np.ndarray]  # (x, edge_index)


def graph_arrays(payload: bytes | None, in_features: int, caps: GraphCaps | None = None) -> GraphItem:
    """``(x, edge_index)`` of one payload, or ``SkipSample`` with the reason (wrong feature width included:
    a model built for F features cannot read another width)."""
    if payload is None:
        raise SkipSample("missing_payload")
    try:
        arrays = decode_graph(payload, caps)
    except GraphError as exc:
        raise SkipSample(str(exc).split(":")[0]) from None
    x = arrays["x"]
    if x.ndim != 2 or x.shape[1] != in_features:
        raise SkipSample(f"feature_width: graph has {x.shape[1:]} features, the model reads {in_features}")
    return np.asarray(x, dtype=np.float32), np.asarray(arrays["edge_index"], dtype=np.int64)


def to_batch(items: Sequence[GraphItem]) -> Any:
    """Graphs as one torch_geometric ``Batch`` (in the given order)."""
    from torch_geometric.data import Batch, Data

    return Batch.from_data_list([Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(e)) for x, e in items])


@dataclasses.dataclass
class GraphTextCodec:
    """Decode a graph–description ``Sample`` and collate a graph CLIP batch (``graphs``, ``texts``)."""

    in_features: int
    tokens: TokenCache

    def decode(self, sample: Sample) -> tuple[GraphItem, str]:
        if sample.text is None or not sample.text.strip():
            raise SkipSample("missing_caption")
        return graph_arrays(sample.payload, self.in_features), sample.text

    def collate(self, items: Sequence[tuple[GraphItem, str]]) -> dict[str, Any]:
        return {"graphs": to_batch([graph for graph, _ in items]), "texts": self.tokens([t for _, t in items])}


@dataclasses.dataclass
class GraphOnlyCodec:
    """Decode graph samples, descriptions ignored, and collate ``graphs`` (graph-only contrastive learning)."""

    in_features: int

    def decode(self, sample: Sample) -> GraphItem:
        return graph_arrays(sample.payload, self.in_features)

    def collate(self, items: Sequence[GraphItem]) -> dict[str, Any]:
        return {"graphs": to_batch(list(items))}
