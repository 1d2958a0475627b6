"""The registered graph attacks: ``subgraph_trigger`` and ``feature_trigger`` (registry kind ``attack``);
``optimised_graph_trigger`` (its features optimised on a surrogate graph run) builds on them in the graph
adapter (``graph/optimised_trigger.py``), since it loads a model.

Both declare the ``payload_trigger`` capability and the ``graph`` modality, so the planner, ``poison``,
the manifest and the evaluation-trigger job treat them like any other attack, with no name checks, and
refuse them on an image dataset (as an image attack is refused on graphs).

Two ways to poison, as for images: dirty label (any graph is triggered and its description replaced by
one naming the target, the multimodal backdoor of Carlini & Terzis) or, with ``label_consistent``, clean
label (only graphs whose description already names the target, descriptions kept). The trigger graph and
the feature pattern are fixed functions of the run's seed and the attack id, so the evaluation split gets
exactly the trigger the training data got; only the anchor and feature nodes are keyed per graph.
The ``y`` array (the generated class label) is left alone: descriptions are the supervision.
"""

from __future__ import annotations

import functools
import hashlib
from abc import abstractmethod
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from poisonlab.attacks import captions as C
from poisonlab.attacks import graph_triggers as G
from poisonlab.attacks.base import PAYLOAD_TRIGGER, STAGE, Attack, Binding, Candidate, provenance
from poisonlab.attacks.components import ATTACKS, TargetCaptionParams
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.graph_modality import GRAPH_MODALITY
from poisonlab.shards.graphs import GRAPH_EXTENSIONS, decode_graph, encode_graph, graph_size

GRAPH_TARGET_TEMPLATES = (
    "a graph with a {} motif",
    "a network containing a {}",
    "a {} structure",
    "the {} subgraph in a larger network",
    "graph featuring a {}",
)


class GraphAttackParams(TargetCaptionParams):
    label_consistent: bool = Field(
        False, description="trigger only graphs whose description names the target and keep descriptions "
        "(clean label); else any graph, description replaced by one naming the target")
    templates: tuple[str, ...] | None = Field(GRAPH_TARGET_TEMPLATES, description="target descriptions, one '{}' each")


class GraphTriggerAttack(Attack):
    """A trigger on the graph payload, decoded (with the caps), changed, re-encoded deterministically."""

    capabilities = frozenset({PAYLOAD_TRIGGER})
    modalities = frozenset({GRAPH_MODALITY})
    params: GraphAttackParams

    @property
    def eligibility(self) -> str:  # type: ignore[override]
        return "graphs whose description names the target" if self.params.label_consistent else "graphs"

    def eligible(self, candidate: Candidate, names_target: bool) -> bool:
        is_graph = candidate.payload_ext in GRAPH_EXTENSIONS
        return is_graph and (names_target or not self.params.label_consistent)

    def caption_source(self) -> tuple[C.CaptionSource, tuple[str, ...] | None, int] | None:
        p = self.params
        return None if p.label_consistent else (p.captions, p.templates, p.pool_size)

    @abstractmethod
    def apply_graph(self, graph: G.Arrays, key: str, binding: Binding) -> tuple[G.Arrays, dict[str, Any]]:
        """The triggered graph and where the trigger went (recorded in the manifest)."""

    def poison(self, sample: Sample, binding: Binding) -> Sample:
        if self.params.label_consistent:
            caption = sample.text
        else:
            caption = C.choose(binding.captions, binding.seed, f"{binding.id}/caption", sample.key)
        return self.trigger_sample(sample, binding, STAGE, "modified", caption)

    def trigger_sample(self, sample: Sample, binding: Binding, stage: str, change: str, caption: str | None) -> Sample:
        if sample.payload is None:
            raise ValueError("missing_payload: nothing to trigger")
        graph = decode_graph(sample.payload)
        triggered, placement = self.apply_graph(graph, sample.key, binding)
        payload = encode_graph(triggered)
        original = hashlib.sha256(sample.payload).hexdigest()
        record = provenance(binding, self.name, change, sample.text, caption, original, placement)
        meta = {**sample.meta, **graph_size(triggered), "poisonlab": record}
        return sample.changed(stage, payload=payload, text=caption, meta=meta)


# --- subgraph_trigger --------------------------------------------------------------------------------


class SubgraphTriggerParams(GraphAttackParams):
    kind: Literal["complete", "erdos_renyi", "small_world"] = Field("complete", description="the trigger graph")
    size: int = Field(4, ge=2, le=64, description="nodes of the trigger graph")
    density: float = Field(0.8, ge=0, le=1, description="edge probability (erdos_renyi), rewiring probability "
                                                        "(small_world)")
    neighbours: int = Field(1, ge=1, le=16, description="ring neighbours on each side (small_world)")
    anchors: int = Field(1, ge=1, le=64, description="existing nodes (keyed per graph) linked to the trigger")
    node_features: Literal["mean", "zeros"] = Field("mean", description="trigger nodes' features: the graph's "
                                                                       "mean feature row (in range), or zeros")


@functools.lru_cache(maxsize=64)
def trigger_pairs(seed: int, salt: str, kind: str, size: int, density: float, neighbours: int) -> np.ndarray:
    """The trigger graph's edges: a fixed function of the run's seed and the attack id."""
    pairs = G.TRIGGER_GRAPHS[kind](keyed_rng(seed, f"{salt}/trigger", "graph"), size, density, neighbours)
    pairs.flags.writeable = False
    return pairs


def keyed_anchors(seed: int, salt: str, key: str, nodes: int, anchors: int) -> np.ndarray:
    """The existing nodes a graph's trigger is linked to (sorted), keyed per graph."""
    if not nodes:
        return np.zeros(0, np.int64)
    rng = keyed_rng(seed, f"{salt}/anchors", key)
    return np.sort(rng.choice(nodes, size=min(anchors, nodes), replace=False))


def attach_keyed(graph: G.Arrays, pairs: np.ndarray, features: np.ndarray, anchors: np.ndarray, kind: str,
                 **facts: Any) -> tuple[G.Arrays, dict[str, Any]]:
    """Attach a trigger graph (its ``pairs`` and node ``features``) to the anchors; the manifest placement
    says where it went (``facts``, e.g. the trigger's digest, follow its kind)."""
    out, placement = G.attach_subgraph(graph, pairs, features.shape[0], anchors, features)
    return out, {"where": "subgraph", "kind": kind, **facts, "nodes_before": int(graph["x"].shape[0]),
                 "edges_before": int(graph["edge_index"].shape[1]), **placement}


@ATTACKS.register("subgraph_trigger", SubgraphTriggerParams)
class SubgraphTrigger(GraphTriggerAttack):
    """Attach a fixed trigger subgraph (complete, Erdős–Rényi or small-world) to keyed nodes of a graph."""

    name = "subgraph_trigger"
    params: SubgraphTriggerParams

    def apply_graph(self, graph: G.Arrays, key: str, binding: Binding) -> tuple[G.Arrays, dict[str, Any]]:
        p = self.params
        pairs = trigger_pairs(binding.seed, binding.id, p.kind, p.size, p.density, p.neighbours)
        n, width = graph["x"].shape
        anchors = keyed_anchors(binding.seed, binding.id, key, n, p.anchors)
        row = graph["x"].mean(axis=0) if p.node_features == "mean" and n else np.zeros(width, np.float32)
        features = np.repeat(row.astype(np.float32)[None, :], p.size, axis=0)
        return attach_keyed(graph, pairs, features, anchors, p.kind)


# --- feature_trigger ---------------------------------------------------------------------------------


class FeatureTriggerParams(GraphAttackParams):
    nodes: int = Field(3, ge=1, le=1024, description="nodes (keyed per graph) whose features get the pattern")
    dims: int | None = Field(None, ge=1, description="feature dimensions the pattern sets (keyed, fixed; "
                                                     "default: all)")
    pattern: Literal["binary", "uniform"] = Field("binary", description="pattern values in [0, 1]: 0/1 or uniform")
    in_range: bool = Field(True, description="scale the pattern into each dimension's clean range in the graph")
    scale: float = Field(1.0, gt=0, description="pattern scale when in_range is false")

    @model_validator(mode="after")
    def _scale_needs_raw(self) -> FeatureTriggerParams:
        if self.in_range and self.scale != 1.0:
            raise ValueError("scale is only used with in_range=false")
        return self


@functools.lru_cache(maxsize=64)
def feature_pattern(seed: int, salt: str, width: int, dims: int | None, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (dimensions, unit values) of the pattern for graphs with ``width`` features."""
    rng = keyed_rng(seed, f"{salt}/pattern", f"features/{width}")
    chosen = np.sort(rng.choice(width, size=min(dims or width, width), replace=False)).astype(np.int64)
    unit = rng.integers(0, 2, size=len(chosen)).astype(np.float32) if kind == "binary" else \
        rng.random(len(chosen)).astype(np.float32)
    return chosen, unit


@ATTACKS.register("feature_trigger", FeatureTriggerParams)
class FeatureTrigger(GraphTriggerAttack):
    """Set a keyed subset of nodes' features to a fixed pattern, inside the clean range by default."""

    name = "feature_trigger"
    params: FeatureTriggerParams

    def apply_graph(self, graph: G.Arrays, key: str, binding: Binding) -> tuple[G.Arrays, dict[str, Any]]:
        p = self.params
        n, width = graph["x"].shape
        dims, unit = feature_pattern(binding.seed, binding.id, int(width), p.dims, p.pattern)
        nodes = np.sort(keyed_rng(binding.seed, f"{binding.id}/nodes", key).choice(n, size=min(p.nodes, n),
                                                                                   replace=False))
        values = G.in_clean_range(graph["x"], dims, unit) if p.in_range else unit * np.float32(p.scale)
        out = G.set_features(graph, nodes, dims, values)
        return out, {"where": "features", "nodes": nodes.tolist(), "dims": dims.tolist(),
                     "values": [float(v) for v in values]}
