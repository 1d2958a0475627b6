"""GraphCL's views of a batch of graphs: node dropping, edge perturbation, attribute masking, subgraphs.

They run on the collated batch, in the training process, with torch's global generator: the loop seeds
it per (seed, epoch) and a resumed run restores it, so the views are as reproducible as the data order
(the codec in the data workers stays free of randomness). Each function returns a new ``GraphView``;
the batch it was given is unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch


@dataclasses.dataclass
class GraphView:
    """What the graph encoder reads of a batch: node features, edges, each node's graph, the graph count."""

    x: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    @classmethod
    def of(cls, graphs: Any) -> GraphView:
        return cls(graphs.x, graphs.edge_index, graphs.batch, int(graphs.num_graphs))


def drop_nodes(view: GraphView, rate: float) -> GraphView:
    """Remove each node (and its edges) with probability ``rate``; the rest are renumbered."""
    from torch_geometric.utils import subgraph

    keep = torch.rand(view.x.shape[0], device=view.x.device) >= rate
    edge_index, _ = subgraph(keep, view.edge_index, relabel_nodes=True, num_nodes=view.x.shape[0])
    return GraphView(view.x[keep], edge_index, view.batch[keep], view.num_graphs)


def _graph_offsets(view: GraphView) -> tuple[torch.Tensor, torch.Tensor]:
    """Each graph's node count and its first node's index in the batch (nodes are grouped by graph)."""
    counts = torch.bincount(view.batch, minlength=view.num_graphs)
    return counts, torch.cumsum(counts, 0) - counts


def perturb_edges(view: GraphView, rate: float) -> GraphView:
    """Drop each edge with probability ``rate`` and add as many random edges, each inside one graph."""
    n_edges, device = view.edge_index.shape[1], view.x.device
    kept = view.edge_index[:, torch.rand(n_edges, device=device) >= rate]
    added = n_edges - kept.shape[1]
    if added == 0 or view.x.shape[0] == 0:
        return GraphView(view.x, kept, view.batch, view.num_graphs)
    counts, starts = _graph_offsets(view)
    src = torch.randint(0, view.x.shape[0], (added,), device=device)
    graph = view.batch[src]
    dst = starts[graph] + (torch.rand(added, device=device) * counts[graph]).long()
    return GraphView(view.x, torch.cat([kept, torch.stack([src, dst])], dim=1), view.batch, view.num_graphs)


def mask_attributes(view: GraphView, rate: float) -> GraphView:
    """Zero the features of each node with probability ``rate``."""
    masked = torch.rand(view.x.shape[0], 1, device=view.x.device) < rate
    return GraphView(view.x.masked_fill(masked, 0.0), view.edge_index, view.batch, view.num_graphs)


def _hops_from_seeds(view: GraphView, max_hops: int) -> torch.Tensor:
    """Each node's hop distance from one random seed node of its graph (``max_hops + 1`` beyond reach)."""
    n, device = view.x.shape[0], view.x.device
    counts, starts = _graph_offsets(view)
    seeds = starts + (torch.rand(view.num_graphs, device=device) * counts).long()
    hops = torch.full((n,), max_hops + 1, dtype=torch.long, device=device)
    hops[seeds[counts > 0]] = 0
    src, dst = view.edge_index
    for hop in range(1, max_hops + 1):
        frontier = torch.zeros(n, dtype=torch.bool, device=device)
        frontier[dst[hops[src] == hop - 1]] = True
        reached = frontier & (hops > hop)
        if not reached.any():  # every graph's reachable part is numbered: further hops change nothing
            break
        hops[reached] = hop
    return hops


def crop_subgraph(view: GraphView, rate: float) -> GraphView:
    """Keep the ``1 - rate`` share of each graph's nodes nearest (in hops, ties at random) to one random seed
    node: a connected neighbourhood where the graph is connected (GraphCL's subgraph view)."""
    from torch_geometric.utils import subgraph

    n = view.x.shape[0]
    if n == 0:
        return view
    counts, starts = _graph_offsets(view)
    hops = _hops_from_seeds(view, max_hops=int(counts.max()))
    order = torch.argsort(view.batch.double() * (n + 2) + hops.double() + torch.rand(n, device=view.x.device))
    rank = torch.empty(n, dtype=torch.long, device=view.x.device)
    rank[order] = torch.arange(n, device=view.x.device) - starts[view.batch[order]]
    quota = torch.clamp(torch.ceil(counts * (1.0 - rate)).long(), min=1)
    keep = rank < quota[view.batch]
    edge_index, _ = subgraph(keep, view.edge_index, relabel_nodes=True, num_nodes=n)
    return GraphView(view.x[keep], edge_index, view.batch[keep], view.num_graphs)


AUGMENTATIONS: dict[str, Callable[[GraphView, float], GraphView]] = {
    "drop_nodes": drop_nodes, "perturb_edges": perturb_edges, "mask_attributes": mask_attributes,
    "subgraph": crop_subgraph}


def random_view(view: GraphView, names: tuple[str, ...], rate: float) -> GraphView:
    """One augmentation drawn uniformly from ``names`` (GraphCL's random pairing), applied at ``rate``."""
    name = names[int(torch.randint(len(names), ()))]
    return AUGMENTATIONS[name](view, rate)
