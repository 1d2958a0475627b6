"""Graph triggers as pure functions of arrays: no I/O, no global state, no torch.

A graph is the dict of arrays of a ``KEY.npz`` payload (``edge_index`` int64 2 x E, ``x`` float32 N x F,
per-node ``node_*`` arrays, graph-level extras such as ``y``). Every function returns new arrays and leaves its inputs alone;
randomness (the trigger graph, the anchor nodes, the feature pattern) is drawn by the callers from keyed
generators and passed in, so the poisoning stage and the evaluation split apply the very same trigger.

Edits are appends or overwrites at recorded places, never a reordering: a subgraph trigger adds nodes
``N..N+T-1`` after the existing ones and its edges after the existing edges, so what the manifest records
is exactly what changed, and everything else is byte-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from poisonlab.shards.graphs import NODE_PREFIX

Arrays = dict[str, np.ndarray]
Pairs = np.ndarray  # k x 2 int64, local node ids, i < j


def _pairs(edges: list[tuple[int, int]]) -> Pairs:
    return np.asarray(sorted({(min(a, b), max(a, b)) for a, b in edges if a != b}), dtype=np.int64).reshape(-1, 2)


def complete_graph(rng: np.random.Generator, size: int, density: float, neighbours: int) -> Pairs:
    """Every pair of the ``size`` nodes (a clique: the densest, most visible trigger)."""
    return _pairs([(i, j) for i in range(size) for j in range(i + 1, size)])


def erdos_renyi(rng: np.random.Generator, size: int, density: float, neighbours: int) -> Pairs:
    """Each pair independently with probability ``density``."""
    keep = rng.random(size * (size - 1) // 2) < density
    pairs = [(i, j) for i in range(size) for j in range(i + 1, size)]
    return _pairs([p for p, k in zip(pairs, keep, strict=True) if k])


def small_world(rng: np.random.Generator, size: int, density: float, neighbours: int) -> Pairs:
    """Watts–Strogatz: a ring where each node links ``neighbours`` nodes on each side, each link rewired
    with probability ``density`` to a node it is not yet linked to."""
    ring = sorted({(i, (i + j) % size) for i in range(size) for j in range(1, min(neighbours, (size - 1) // 2) + 1)})
    linked = {frozenset(e) for e in ring}
    for a, b in ring:
        if rng.random() < density:
            free = [c for c in range(size) if c != a and frozenset((a, c)) not in linked]
            if free:
                linked.discard(frozenset((a, b)))
                linked.add(frozenset((a, free[int(rng.integers(len(free)))])))
    return _pairs([(min(e), max(e)) for e in linked])


# The trigger-graph generators, by name (the ``kind`` parameter of ``subgraph_trigger``).
TRIGGER_GRAPHS: dict[str, Callable[[np.random.Generator, int, float, int], Pairs]] = {
    "complete": complete_graph,
    "erdos_renyi": erdos_renyi,
    "small_world": small_world,
}


def _both_ways(pairs: np.ndarray) -> np.ndarray:
    """``2 x 2k`` columns (u, v), (v, u) for each pair, in pair order."""
    return np.stack([pairs, pairs[:, ::-1]], axis=1).reshape(-1, 2).T.astype(np.int64)


def attach_subgraph(graph: Mapping[str, np.ndarray], pairs: Pairs, size: int, anchors: np.ndarray,
                    features: np.ndarray) -> tuple[Arrays, dict[str, list]]:
    """Append a trigger of ``size`` nodes (internal ``pairs``) and link trigger node ``i % size`` to
    ``anchors[i]``; returns the new graph and the new nodes and edges (what changed, nothing else did)."""
    x, edge_index = graph["x"], graph["edge_index"]
    n = int(x.shape[0])
    if features.shape != (size, x.shape[1]):
        raise ValueError(f"trigger features must be {size} x {x.shape[1]}, not {features.shape}")
    links = np.asarray([(int(a), n + i % size) for i, a in enumerate(anchors)], dtype=np.int64).reshape(-1, 2)
    added = np.concatenate([_both_ways(pairs + n), _both_ways(links)], axis=1)
    out = dict(graph)
    out["edge_index"] = np.ascontiguousarray(np.concatenate([edge_index, added], axis=1), dtype=np.int64)
    out["x"] = np.ascontiguousarray(np.concatenate([x, features.astype(np.float32)]), dtype=np.float32)
    for name in (k for k in graph if k.startswith(NODE_PREFIX)):  # per-node arrays: zero rows for the new nodes
        rows = graph[name]
        out[name] = np.concatenate([rows, np.zeros((size, *rows.shape[1:]), dtype=rows.dtype)])
    return out, {"new_nodes": list(range(n, n + size)), "new_edges": added.T.tolist(),
                 "anchors": [int(a) for a in anchors]}


def set_features(graph: Mapping[str, np.ndarray], nodes: np.ndarray, dims: np.ndarray,
                 values: np.ndarray) -> Arrays:
    """Overwrite ``x[nodes, dims]`` with ``values`` (one row, broadcast to every chosen node)."""
    out = dict(graph)
    x = np.array(graph["x"], dtype=np.float32, copy=True)
    x[np.ix_(nodes, dims)] = values.astype(np.float32)[None, :]
    out["x"] = x
    return out


def in_clean_range(x: np.ndarray, dims: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """Map a ``[0, 1]`` pattern into each dimension's clean range in this graph (min..max of ``x``)."""
    if x.shape[0] == 0:
        return unit.astype(np.float32)
    low, high = x[:, dims].min(axis=0), x[:, dims].max(axis=0)
    return (low + (high - low) * unit).astype(np.float32)
