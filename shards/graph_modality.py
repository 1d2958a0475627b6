"""The ``graph`` modality: ``KEY.npz`` graphs with optional ``KEY.txt`` descriptions, read with caps.

Registered like ``image`` (``get_registry("modality")``), with a registered payload check
(``payload_probe``) that every reader runs through ``ReadPolicy``: a graph that is refused (objects,
pickles, over the caps, edges out of range) is an error with a reason in the shard's accounting, and a
good one's nodes and edges land in its metadata, hence in the sidecar, as an image's width and height do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pydantic import Field

from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.shards.dataset import MODALITIES, Modality
from poisonlab.shards.graphs import GRAPH_EXTENSIONS, GraphCaps, probe_graph

GRAPH_MODALITY = "graph"
_DEFAULT = GraphCaps()


class GraphCapsParams(Params):
    max_nodes: int = Field(_DEFAULT.max_nodes, gt=0, description="more nodes is a graph bomb (an error)")
    max_edges: int = Field(_DEFAULT.max_edges, ge=0, description="more edges is a graph bomb (an error)")
    max_feature_values: int = Field(_DEFAULT.max_feature_values, ge=0, description="cap on N x F node features")
    max_extra_values: int = Field(_DEFAULT.max_extra_values, ge=0, description="cap on the optional arrays")
    max_arrays: int = Field(_DEFAULT.max_arrays, ge=2, description="cap on the arrays in one .npz")


@get_registry("payload_probe").register(GRAPH_MODALITY, GraphCapsParams, summary="validate .npz graphs under caps")
def graph_probe(params: GraphCapsParams) -> Callable[[bytes], dict[str, int]]:
    caps = GraphCaps(**params.model_dump())
    return lambda data: probe_graph(data, caps)


class GraphModalityParams(GraphCapsParams):
    require_text: bool = Field(False, description="a graph without a description is an error (descriptions are "
                               "optional: graph-only contrastive learning needs none)")


@MODALITIES.register(GRAPH_MODALITY, GraphModalityParams, summary="graphs (.npz: edge_index, x) with descriptions")
def graph_modality(params: GraphModalityParams) -> Modality:
    caps = tuple(sorted(params.model_dump(exclude={"require_text"}).items()))
    return Modality(GRAPH_MODALITY, GRAPH_EXTENSIONS, require_text=params.require_text, payload_probe=GRAPH_MODALITY,
                    probe_params=caps)


def graph_caps(policy_params: tuple[tuple[str, int], ...]) -> GraphCaps:
    """The caps a read policy carries (what attacks decode with)."""
    known = {f.name for f in dataclasses.fields(GraphCaps)}
    return GraphCaps(**{k: v for k, v in policy_params if k in known})
