"""The ``optimised_graph_trigger`` attack (GCBA-style): a trigger subgraph whose features are optimised.

The trigger's structure is ``subgraph_trigger``'s (``kind``, ``size``, ``density``, ``neighbours``, linked
to ``anchors`` keyed nodes); its node features are optimised once, when the run is planned, on a surrogate
graph run (``graph.trigger_optimiser``), and the trigger graph is then an asset of the attack spec like
``optimised_patch``'s patch: every worker and every evaluation attaches exactly those bytes, and nothing is
optimised again.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from poisonlab.attacks import graph_triggers as G
from poisonlab.attacks.assets import AssetError, AssetRef
from poisonlab.attacks.base import Binding
from poisonlab.attacks.captions import TargetPrompts
from poisonlab.attacks.components import ATTACKS
from poisonlab.attacks.graph_attacks import (
    GRAPH_TARGET_TEMPLATES,
    GraphTriggerAttack,
    SubgraphTriggerParams,
    attach_keyed,
    keyed_anchors,
    trigger_pairs,
)
from poisonlab.attacks.image_triggers import PatternContext

TRIGGER_EXT = "npz"


class OptimisedGraphTriggerParams(SubgraphTriggerParams):
    surrogate: str = Field(..., description="the surrogate graph run folder (`poisonlab train --objective graph_clip` "
                           "or graphcl; relative to the recipe's folder or the working directory)")
    node_features: Literal["mean", "zeros"] = Field("mean", description="where the optimisation starts: the sampled "
                                                                       "graphs' mean feature row, or zeros")
    steps: int = Field(100, ge=1, le=100_000, description="Adam steps")
    lr: float = Field(0.05, gt=0, description="Adam learning rate on the trigger's features")
    sample_graphs: int = Field(128, ge=1, le=65_536, description="dataset graphs (not naming the target) the trigger "
                               "is optimised over")
    in_range: bool = Field(True, description="keep each feature in its clean range (min..max over the sampled graphs)")
    prompts: TargetPrompts = Field(GRAPH_TARGET_TEMPLATES, min_length=1, description="prompts naming the target, "
                                     "each with '{}' (a surrogate with a text tower)")


@functools.lru_cache(maxsize=8)
def _trigger(data: bytes) -> tuple[np.ndarray, np.ndarray, str]:
    from poisonlab.graph.trigger_optimiser import trigger_arrays

    pairs, features = trigger_arrays(data)
    pairs.flags.writeable = features.flags.writeable = False
    return pairs, features, hashlib.sha256(data).hexdigest()


@ATTACKS.register("optimised_graph_trigger", OptimisedGraphTriggerParams)
class OptimisedGraphTrigger(GraphTriggerAttack):
    """Attach the spec's optimised trigger subgraph to keyed nodes of a graph."""

    name = "optimised_graph_trigger"
    params: OptimisedGraphTriggerParams

    def pattern_asset(self, context: PatternContext) -> tuple[AssetRef, bytes] | None:
        from poisonlab.graph.trigger_optimiser import GraphTriggerProblem, make_trigger, trigger_bytes

        if context.source is None or not context.target:
            raise AssetError("optimised_graph_trigger optimises its trigger on the dataset it poisons, for its target: "
                             "build its spec with `poisonlab poison`, then use that folder's attack.json")
        p = self.params
        surrogate = Path(p.surrogate)
        surrogate = surrogate if surrogate.is_absolute() else Path(context.base_dir) / surrogate
        pairs = trigger_pairs(context.seed, context.salt, p.kind, p.size, p.density, p.neighbours)
        problem = GraphTriggerProblem(pairs=np.asarray(pairs), size=p.size, steps=p.steps, lr=p.lr,
                                      in_range=p.in_range, start=p.node_features)

        def anchors_of(key: str, nodes: int) -> np.ndarray:
            return keyed_anchors(context.seed, context.salt, key, nodes, p.anchors)

        features, _ = make_trigger(surrogate, Path(context.source), context.target, p.prompts, p.sample_graphs,
                                   problem, anchors_of, context.seed, context.salt)
        data = trigger_bytes(problem.pairs, features)
        return AssetRef(hashlib.sha256(data).hexdigest(), TRIGGER_EXT), data

    def apply_graph(self, graph: G.Arrays, key: str, binding: Binding) -> tuple[G.Arrays, dict[str, Any]]:
        if binding.pattern is None:
            raise ValueError(f"{self.name}: the optimised trigger was not bound (load the attack from its spec)")
        pairs, features, digest = _trigger(binding.pattern)
        n, width = graph["x"].shape
        if features.shape[1] != width:
            raise ValueError(f"feature_width: the trigger has {features.shape[1]} features, the graph {width}")
        anchors = keyed_anchors(binding.seed, binding.id, key, n, self.params.anchors)
        return attach_keyed(graph, pairs, features, anchors, self.params.kind, trigger_sha256=digest)
