"""What detectors share during one scan: the corpus, the columns already scored, and neighbour graphs.

A neighbour graph is the expensive part of a scan (an index built over the whole dataset and searched
once per point), so it is computed once per (model, space, mode, index) with the largest k any detector
asked for, and every k-NN detector takes its first k columns (neighbour lists are sorted, so the first k
of a larger list are exactly the k nearest).
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

from poisonlab.filters.corpus import Corpus
from poisonlab.filters.index import IndexParams
from poisonlab.filters.neighbours import (
    NeighbourGraph,
    batch_local_graph,
    global_graph,
    global_kth_distances,
    reference_set,
)
from poisonlab.filters.outliers import LID_ESTIMATORS
from poisonlab.filters.sharded_knn import ShardRunner

RECALL_WARNING = 0.9  # below this sampled recall@k, a scan warns that its neighbourhoods are unreliable


@dataclasses.dataclass(frozen=True)
class NeighbourhoodKey:
    model: str
    space: str
    mode: str
    batch_size: int = 0  # batch_local only
    seed: int = 0  # batch_local only
    index: IndexParams | None = None  # global only


class ScanContext:
    """``shard_runner`` searches the index shards of graphs built under a memory budget (``index.memory``):
    in this process, one after another, unless the caller hands a Dask one (``poisonlab.flows.knn_dask``)."""

    def __init__(self, corpus: Corpus, shard_runner: ShardRunner | None = None) -> None:
        self.corpus = corpus
        self.shard_runner = shard_runner
        self.columns: dict[str, np.ndarray] = {}
        self.timings: dict[str, float] = {}
        self.graph_info: dict[str, dict] = {}
        self._planned: dict[NeighbourhoodKey, int] = {}
        self._planned_ks: dict[NeighbourhoodKey, set[int]] = {}
        self._read_lists: set[NeighbourhoodKey] = set()
        self._graphs: dict[NeighbourhoodKey, NeighbourGraph] = {}
        self._kth: dict[NeighbourhoodKey, NeighbourGraph] = {}
        self._stats: dict[tuple, np.ndarray] = {}

    @property
    def graphs(self) -> dict[NeighbourhoodKey, NeighbourGraph]:
        """The neighbour graphs built so far (for reports and benchmarks)."""
        return dict(self._graphs)

    def resolved(self, key: NeighbourhoodKey) -> NeighbourhoodKey:
        """The key with its space named as stored (``sample`` is the payload's own), so detectors that say
        ``sample`` and ``image`` of an image store share one graph."""
        space = self.corpus.model(key.model).info.resolve(key.space)
        return key if space == key.space else dataclasses.replace(key, space=space)

    def plan(self, key: NeighbourhoodKey, k: int, lists: bool = True) -> None:
        """Announce that a detector will need k neighbours, so the graph is built once, large enough.
        ``lists=False``: it reads only each point's k-distance, never who the neighbours are."""
        key = self.resolved(key)
        self._planned[key] = max(self._planned.get(key, 0), k)
        self._planned_ks.setdefault(key, set()).add(k)
        if lists:
            self._read_lists.add(key)

    def graph(self, key: NeighbourhoodKey, k: int) -> NeighbourGraph:
        key = self.resolved(key)
        cached = self._graphs.get(key)
        if cached is not None and cached.k >= k:
            return cached
        want = max(k, self._planned.get(key, 0))
        start = time.perf_counter()
        refs = reference_set(self.corpus.model(key.model), key.space)
        if key.mode == "global":
            graph = global_graph(refs, want, key.index or IndexParams(), self.shard_runner)
        elif key.mode == "batch_local":
            graph = batch_local_graph(refs, self.corpus.keys, want, key.batch_size, key.seed)
        else:
            raise ValueError(f"unknown neighbourhood mode {key.mode!r}; use global or batch_local")
        self._graphs[key] = graph
        self._record(key, graph, want, start)
        return graph

    def kth_graph(self, key: NeighbourhoodKey, k: int) -> NeighbourGraph:
        """A graph to read k-distances from. When the only use planned for this neighbourhood is one k's
        distances, and the search is a single global index, it holds just those (``global_kth_distances``:
        the same floats, without the (n, k) lists); otherwise it is ``graph(key, k)``."""
        key = self.resolved(key)
        index = key.index or IndexParams()
        alone = key not in self._read_lists and self._planned_ks.get(key) == {k} and key not in self._graphs
        if key.mode != "global" or index.memory is not None or not alone:
            return self.graph(key, k)
        if key not in self._kth:
            start = time.perf_counter()
            self._kth[key] = global_kth_distances(reference_set(self.corpus.model(key.model), key.space), k, index)
            self._record(key, self._kth[key], k, start)
        return self._kth[key]

    def _record(self, key: NeighbourhoodKey, graph: NeighbourGraph, k: int, start: float) -> None:
        refs = graph.refs
        self.graph_info[_describe(key)] = {"k": k, "references": len(refs.rows), "queries": refs.queries,
                                           "index": graph.source, "recall_estimate": graph.recall_estimate,
                                           "seconds": round(time.perf_counter() - start, 3), "phases": graph.seconds}
        if graph.plan is not None:
            self.graph_info[_describe(key)]["plan"] = graph.plan
        if graph.kth_only:
            self.graph_info[_describe(key)]["kth_only"] = True
        if graph.recall_estimate is not None and graph.recall_estimate < RECALL_WARNING:
            warnings.warn(f"the {graph.source} index found only {graph.recall_estimate:.1%} of the true {k} nearest "
                          f"neighbours on a sample of queries ({_describe(key)}); raise index.nprobe or use "
                          "index.kind=exact", stacklevel=3)

    def kdist(self, key: NeighbourhoodKey, k: int) -> np.ndarray:
        """k-distance of every reference point (what a neighbour's density is measured by)."""
        key = self.resolved(key)
        cache = (key, "kdist", k)
        if cache not in self._stats:
            self._stats[cache] = self.kth_graph(key, k).k_distance(k)
        return self._stats[cache]

    def lid(self, key: NeighbourhoodKey, k: int, estimator: str) -> np.ndarray:
        key = self.resolved(key)
        cache = (key, "lid", k, estimator)
        if cache not in self._stats:
            self._stats[cache] = LID_ESTIMATORS[estimator](self.graph(key, k).dist, k)
        return self._stats[cache]

    def scatter(self, graph: NeighbourGraph, values: np.ndarray) -> np.ndarray:
        """Per-query values onto corpus rows (NaN for rows that are not queries of this space)."""
        out = np.full(len(self.corpus), np.nan)
        out[graph.refs.rows[: graph.refs.queries]] = values[: graph.refs.queries]
        return out


def _describe(key: NeighbourhoodKey) -> str:
    where = f"batch_local(batch_size={key.batch_size}, seed={key.seed})" if key.mode == "batch_local" else "global"
    return f"{key.model}/{key.space}/{where}"
