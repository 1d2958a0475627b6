"""A trigger subgraph whose node features are optimised on a surrogate graph encoder (GCBA-style).

Xu et al. (GCBA, ICML 2023) backdoor graph contrastive learning with a trigger optimised so that triggered
graphs already embed near the target: the encoder then learns the association from fewer poisoned graphs.
Here the trigger's structure is the fixed keyed subgraph of ``subgraph_trigger`` (so its placement is
recorded the same way) and its node FEATURE rows are optimised by Adam through a surrogate graph run
(``poisonlab train --objective graph_clip`` or ``graphcl``) to maximise the cosine similarity between the
embeddings of triggered graphs and the target direction: the mean text embedding of prompts naming the
target when the run has a text tower, else the mean embedding of the dataset's graphs whose description
names the target. The graphs optimised over are those whose description does not name the target (the
graphs a trigger must move), each with the very anchors the poisoning stage will give it.

Deterministic: the graphs come in keyed shard order, the start is their mean feature row (or zeros), and
torch runs on one thread, so the same seed gives the same feature bytes. With ``in_range`` every step is
projected back into each dimension's clean range (min..max over the sampled graphs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poisonlab.attacks import captions as C
from poisonlab.attacks import graph_triggers as G
from poisonlab.attacks.assets import AssetError
from poisonlab.attacks.patch_optimiser import one_thread
from poisonlab.graph.codec import GraphItem, graph_arrays, to_batch
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.shards.graphs import decode_graph, encode_graph
from poisonlab.shards.layout import list_shards
from poisonlab.shards.reader import ReadPolicy, read_shard
from poisonlab.training.objectives import SkipSample

Anchors = Callable[[str, int], np.ndarray]  # (key, nodes) -> the keyed anchor nodes of that graph


@dataclasses.dataclass(frozen=True)
class GraphTriggerProblem:
    """What to optimise: the features of a ``size``-node trigger with internal edges ``pairs``."""

    pairs: np.ndarray
    size: int
    steps: int
    lr: float
    in_range: bool
    start: str  # "mean" (the sampled graphs' mean feature row) or "zeros"


@dataclasses.dataclass
class GraphSampleSet:
    """Graphs of the dataset, by whether their description names the target."""

    keys: list[str] = dataclasses.field(default_factory=list)
    others: list[GraphItem] = dataclasses.field(default_factory=list)
    targets: list[GraphItem] = dataclasses.field(default_factory=list)


def sample_graphs(folder: Path, count: int, in_features: int, names_target: Callable[[str | None], bool],
                  want_targets: bool, seed: int, salt: str, policy: ReadPolicy | None = None) -> GraphSampleSet:
    """Up to ``count`` graphs not naming the target (and, when ``want_targets``, up to ``count`` naming it),
    shards in keyed order; graphs the reader or the model's feature width refuses are skipped."""
    from poisonlab.shards.dataset import read_policy_for

    policy = policy or read_policy_for(folder)  # the dataset record says its payloads are graphs
    shards = list_shards(folder)
    order = keyed_rng(seed, f"{salt}/trigger-graphs", "shards").permutation(len(shards))
    out = GraphSampleSet()
    for index in order:
        for sample in read_shard(folder, shards[int(index)], policy):
            if sample.status not in ("ok", "changed"):
                continue
            try:
                item = graph_arrays(sample.payload, in_features)
            except SkipSample:
                continue
            if names_target(sample.text):
                if want_targets and len(out.targets) < count:
                    out.targets.append(item)
            elif len(out.others) < count:
                out.keys.append(sample.key)
                out.others.append(item)
            if len(out.others) >= count and (len(out.targets) >= count or not want_targets):
                return out
    return out


def text_direction(model: Any, tokenizer: Any, target: str, prompts: Sequence[str]) -> torch.Tensor:
    """The unit mean text embedding of the prompts naming the target (a graph CLIP surrogate)."""
    with torch.no_grad():
        text = model.encode_text(tokenizer([p.format(target) for p in prompts])).float().mean(dim=0)
    return torch.nn.functional.normalize(text, dim=0)


def graph_direction(model: Any, graphs: Sequence[GraphItem]) -> torch.Tensor:
    """The unit mean embedding of graphs naming the target (a graph-only surrogate, e.g. GraphCL)."""
    with torch.no_grad():
        mean = model.encode_graph(to_batch(list(graphs))).float().mean(dim=0)
    return torch.nn.functional.normalize(mean, dim=0)


def _triggered_batch(graphs: Sequence[GraphItem], keys: Sequence[str], anchors_of: Anchors,
                     problem: GraphTriggerProblem) -> tuple[Any, torch.Tensor]:
    """The graphs with the trigger attached (zero features), and the batch rows of the trigger nodes."""
    width = graphs[0][0].shape[1]
    zeros = np.zeros((problem.size, width), np.float32)
    items, rows, offset = [], [], 0
    for (x, edges), key in zip(graphs, keys, strict=True):
        n = x.shape[0]
        out, _ = G.attach_subgraph({"x": x, "edge_index": edges}, problem.pairs, problem.size, anchors_of(key, n), zeros)
        items.append((out["x"], out["edge_index"]))
        rows.extend(range(offset + n, offset + n + problem.size))
        offset += n + problem.size
    return to_batch(items), torch.tensor(rows, dtype=torch.int64)


def optimise_trigger(model: Any, graphs: Sequence[GraphItem], keys: Sequence[str], anchors_of: Anchors,
                     direction: torch.Tensor, problem: GraphTriggerProblem) -> tuple[np.ndarray, list[float]]:
    """The trigger's features (``size x F`` float32) and the loss, 1 - mean cosine to the target, of the
    starting trigger, after each step (``steps + 1`` values). The model's weights are not changed."""
    batch, rows = _triggered_batch(graphs, keys, anchors_of, problem)
    clean = np.concatenate([x for x, _ in graphs])
    lowest, highest = clean.min(axis=0), clean.max(axis=0)
    low, high = torch.from_numpy(lowest), torch.from_numpy(highest)
    start = clean.mean(axis=0) if problem.start == "mean" else np.zeros(clean.shape[1], np.float32)
    start = np.clip(start, lowest, highest) if problem.in_range else start
    features = torch.tensor(np.repeat(start[None, :], problem.size, axis=0), dtype=torch.float32, requires_grad=True)
    base, copies = batch.x, len(graphs)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def loss_of(feats: torch.Tensor) -> torch.Tensor:
        batch.x = base.index_put((rows,), feats.repeat(copies, 1))
        return 1.0 - (model.encode_graph(batch) @ direction).mean()

    optimiser = torch.optim.Adam([features], lr=problem.lr)
    losses: list[float] = []
    with one_thread():
        for _ in range(problem.steps):
            loss = loss_of(features)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if problem.in_range:
                with torch.no_grad():
                    features.copy_(torch.clamp(features, low, high))
            losses.append(float(loss.detach()))
        with torch.no_grad():
            losses.append(float(loss_of(features)))
    return features.detach().numpy().astype(np.float32), losses


def trigger_bytes(pairs: np.ndarray, features: np.ndarray) -> bytes:
    """The trigger as a graph payload (each internal pair both ways, in pair order): the spec's asset."""
    both = np.stack([pairs, pairs[:, ::-1]], axis=1).reshape(-1, 2).T.astype(np.int64)
    return encode_graph({"edge_index": np.ascontiguousarray(both), "x": np.ascontiguousarray(features, np.float32)})


def trigger_arrays(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs, features)`` of a trigger asset, read with the capped graph decoder (nothing unpickled)."""
    arrays = decode_graph(data)
    edges, features = arrays["edge_index"], np.asarray(arrays["x"], dtype=np.float32)
    pairs = np.ascontiguousarray(edges[:, 0::2].T, dtype=np.int64)
    if edges.shape[1] % 2 or not np.array_equal(edges[:, 1::2], edges[::-1, 0::2]):
        raise AssetError("optimised graph trigger asset: edges are not listed both ways, pair by pair")
    return pairs, features


def load_surrogate(surrogate: Path) -> Any:
    """The graph run, or an ``AssetError`` in one line (checked before the dataset is read)."""
    from poisonlab.graph.run import is_graph_run, load_graph_run
    from poisonlab.models.zoo import CheckpointError

    if not surrogate.is_dir():
        raise AssetError(f"optimised_graph_trigger: surrogate {surrogate} is not a folder (a graph run folder "
                         "from `poisonlab train --objective graph_clip` or graphcl)")
    if not is_graph_run(surrogate):
        raise AssetError(f"optimised_graph_trigger: surrogate {surrogate} is not a graph run (its model_config.json "
                         "has no graph_cfg)")
    try:
        return load_graph_run(surrogate)
    except (CheckpointError, OSError, ValueError) as exc:
        raise AssetError(f"optimised_graph_trigger: cannot load surrogate {surrogate}: {exc}") from exc


def make_trigger(surrogate: Path, source: Path, target: str, prompts: Sequence[str], count: int,
                 problem: GraphTriggerProblem, anchors_of: Anchors, seed: int, salt: str) -> tuple[np.ndarray, list[float]]:
    """Load the surrogate, sample ``count`` graphs of ``source`` and optimise the trigger's features."""
    loaded = load_surrogate(surrogate)  # a bad surrogate fails before the dataset is read
    pattern = C.mention_pattern(target)
    text = loaded.model.has_text
    width = loaded.cfg.in_features
    graphs = sample_graphs(source, count, width, lambda caption: C.mentions(caption, pattern), not text, seed, salt)
    if not graphs.others:
        raise AssetError(f"optimised_graph_trigger: no graph of {source} with the surrogate's {width} features and a "
                         f"description not naming {target!r} to optimise the trigger on")
    if text:
        direction = text_direction(loaded.model, loaded.tokenizer, target, prompts)
    elif not graphs.targets:
        raise AssetError(f"optimised_graph_trigger: the surrogate has no text tower and no graph of {source} names "
                         f"{target!r}, so there is no target embedding to move toward")
    else:
        direction = graph_direction(loaded.model, graphs.targets)
    return optimise_trigger(loaded.model, graphs.others, graphs.keys, anchors_of, direction, problem)
