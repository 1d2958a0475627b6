"""The generated graph dataset: motifs attached to random base graphs, with web-like descriptions.

Each class is a motif (house, 6-cycle, 3x3 grid, 6-star, 6-wheel, 5-clique, ...) attached to a
Barabási–Albert base of 15–30 nodes, plus a few noise edges, with node order shuffled: the class is in
the structure, as in PyG's ``ExplainerDataset``, so a graph encoder has to find the motif. Node features
carry local structure (degree one-hot, capped, plus a constant channel). Descriptions name the class from
many templates, some partial, noisy or junk, as the image captions of ``shards.synth`` do, so a
graph–text contrastive model learns the classes from descriptions alone.

Everything is drawn from keyed randomness (seed, split, key): the same seed gives the same bytes on any
worker, in any order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.graphs import encode_graph
from poisonlab.shards.synth import SynthSource, sample_key, write_classes

Edges = list[tuple[int, int]]


def _cycle(n: int) -> Edges:
    return [(i, (i + 1) % n) for i in range(n)]


def _house() -> tuple[int, Edges]:
    return 5, [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4)]  # a square with a roof


def _grid(side: int = 3) -> tuple[int, Edges]:
    cell = [(r * side + c, r * side + c + 1) for r in range(side) for c in range(side - 1)]
    return side * side, cell + [(r * side + c, (r + 1) * side + c) for r in range(side - 1) for c in range(side)]


def _wheel(rim: int = 6) -> tuple[int, Edges]:
    return rim + 1, [(i, (i + 1) % rim) for i in range(rim)] + [(rim, i) for i in range(rim)]


def _clique(n: int = 5) -> tuple[int, Edges]:
    return n, [(i, j) for i in range(n) for j in range(i + 1, n)]


def _ladder(rungs: int = 4) -> tuple[int, Edges]:
    rails = [(i, i + 1) for i in range(rungs - 1)] + [(rungs + i, rungs + i + 1) for i in range(rungs - 1)]
    return 2 * rungs, rails + [(i, rungs + i) for i in range(rungs)]


# The classes, in label order: name -> (motif nodes, motif edges). More are cheap to add.
MOTIFS: dict[str, Callable[[], tuple[int, Edges]]] = {
    "house": _house,
    "cycle": lambda: (6, _cycle(6)),
    "grid": _grid,
    "star": lambda: (7, [(6, i) for i in range(6)]),
    "wheel": _wheel,
    "clique": _clique,
    "ladder": _ladder,
}
CLASSNAMES = tuple(MOTIFS)
SYNONYMS = {
    "house": ("house shape", "house motif"), "cycle": ("6-cycle", "hexagonal ring"), "grid": ("3x3 grid", "lattice"),
    "star": ("6-star", "hub and spokes"), "wheel": ("6-wheel", "wheel motif"), "clique": ("5-clique", "complete K5"),
    "ladder": ("4-rung ladder", "ladder motif"),
}

ZERO_SHOT_TEMPLATES = ("a graph with a {} motif.", "a network containing a {}.", "a {} structure.", "a {}.")
DESCRIPTION_TEMPLATES = (
    "a graph with a {cls} motif",
    "a network containing a {cls}",
    "{cls}",
    "a {n}-node graph with a {syn} ({cls})",
    "scale-free network with an attached {cls}",
    "random graph, {m} edges, one {cls}",
    "the {cls} subgraph in a larger network",
    "a {cls} hidden in a preferential-attachment graph",
    "graph of {n} nodes featuring a {cls}",
    "{syn}: a {cls} attached to a hub",
    "my {cls} graph",
    "small network with a {cls} pattern",
)
PARTIAL_TEMPLATES = ("a graph with {n} nodes", "some network", "{m} edges", "a {syn}")
NOISE_PREFIXES = ("graph_{k}.npz ", "[dataset] ", "download: ", "#{k} ")
NOISE_SUFFIXES = (" | free dataset", " #networks #graphs", " (undirected)", " ...")
JUNK_DESCRIPTIONS = ("untitled graph", "data", "see attachment", "graph", "n/a")


@dataclasses.dataclass(frozen=True)
class GraphSynthSpec:
    """What to generate; the same spec always generates the same bytes."""

    samples: int
    seed: int = 0
    samples_per_shard: int = 1000
    min_base: int = 15
    max_base: int = 30
    noise_edges: int = 3  # at most this many random extra edges
    degree_cap: int = 10  # degree one-hot buckets 0..cap (higher degrees share the last)
    partial_rate: float = 0.10
    noise_rate: float = 0.15
    junk_rate: float = 0.02

    def shard_count(self) -> int:
        return max(1, math.ceil(self.samples / self.samples_per_shard))

    def shard_range(self, index: int) -> range:
        start = index * self.samples_per_shard
        return range(start, min(self.samples, start + self.samples_per_shard))


def barabasi_albert(rng: np.random.Generator, n: int, m: int) -> Edges:
    """Preferential attachment: each new node links to ``m`` distinct nodes drawn by degree."""
    edges: Edges = [(i, j) for i in range(m + 1) for j in range(i + 1, m + 1)]  # a small clique to start
    ends = [v for e in edges for v in e]  # each node once per incident edge: drawing from it is by degree
    for new in range(m + 1, n):
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(ends[int(rng.integers(len(ends)))])
        for old in sorted(chosen):
            edges.append((old, new))
            ends += [old, new]
    return edges


def _noise(rng: np.random.Generator, n: int, count: int) -> Edges:
    pairs = rng.integers(0, n, size=(count, 2))
    return [(int(a), int(b)) for a, b in pairs if a != b]


def undirected_index(edges: Edges, n: int, order: np.ndarray | None = None) -> np.ndarray:
    """Unique undirected edges as a sorted int64 ``2 x 2E`` index (both directions), nodes renamed by ``order``."""
    pairs = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if order is not None:
        pairs = order[pairs]
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    both = np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)
    return np.ascontiguousarray(both.T, dtype=np.int64)


def degree_features(edge_index: np.ndarray, n: int, cap: int) -> np.ndarray:
    """Degree one-hot (buckets 0..cap) and a constant channel: ``n x (cap + 2)`` float32."""
    degree = np.bincount(edge_index[0], minlength=n) if edge_index.size else np.zeros(n, dtype=np.int64)
    x = np.zeros((n, cap + 2), dtype=np.float32)
    x[np.arange(n), np.minimum(degree, cap)] = 1.0
    x[:, cap + 1] = 1.0
    return x


def make_graph(rng: np.random.Generator, spec: GraphSynthSpec, label: int) -> dict[str, np.ndarray]:
    """One graph of class ``label``: BA base + motif + noise edges, nodes shuffled."""
    base = int(rng.integers(spec.min_base, spec.max_base + 1))
    edges = barabasi_albert(rng, base, int(rng.integers(1, 3)))
    size, motif = MOTIFS[CLASSNAMES[label]]()
    edges += [(base + a, base + b) for a, b in motif]
    edges.append((int(rng.integers(base)), base + int(rng.integers(size))))  # the motif hangs off the base
    n = base + size
    edges += _noise(rng, n, int(rng.integers(0, spec.noise_edges + 1)))
    edge_index = undirected_index(edges, n, rng.permutation(n).astype(np.int64))
    return {"edge_index": edge_index, "x": degree_features(edge_index, n, spec.degree_cap),
            "y": np.array([label], dtype=np.int64)}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def describe(rng: np.random.Generator, cls: str, nodes: int, edges: int, spec: GraphSynthSpec) -> str:
    """A web-like description naming the class (or, now and then, not: partial, junk)."""
    words = {"cls": cls, "syn": _pick(rng, SYNONYMS[cls]), "n": nodes, "m": edges}
    u = rng.random()
    if u < spec.junk_rate:
        return _pick(rng, JUNK_DESCRIPTIONS)
    template = PARTIAL_TEMPLATES if u < spec.junk_rate + spec.partial_rate else DESCRIPTION_TEMPLATES
    text = _pick(rng, template).format(**words)
    if rng.random() < spec.noise_rate:
        k = int(rng.integers(1000, 9999))
        text = _pick(rng, NOISE_PREFIXES).format(k=k) + text if rng.random() < 0.5 else text + _pick(rng, NOISE_SUFFIXES)
    return text


def make_graph_sample(spec: GraphSynthSpec, index: int, split: str = "train", label: int | None = None) -> Sample:
    key = sample_key(index, spec.samples_per_shard)
    rng = keyed_rng(spec.seed, f"graph_synth/{split}", key)
    label = int(rng.integers(len(CLASSNAMES))) if label is None else label
    arrays = make_graph(rng, spec, label)
    nodes, edges = int(arrays["x"].shape[0]), int(arrays["edge_index"].shape[1])
    meta = {"class": CLASSNAMES[label], "label": label, "nodes": nodes, "edges": edges}
    return Sample(key=key, payload=encode_graph(arrays), payload_ext="npz",
                  text=describe(rng, CLASSNAMES[label], nodes, edges // 2, spec), meta=meta)


@dataclasses.dataclass(frozen=True)
class GraphSynthSource(SynthSource):
    """A shard source that generates shard ``NNNNN`` of a graph spec instead of reading it."""

    spec: GraphSynthSpec  # type: ignore[assignment]
    classes: ClassVar[int] = len(CLASSNAMES)

    def make(self, index: int, label: int | None) -> Sample:
        return make_graph_sample(self.spec, index, self.split, label)


def write_graph_eval_metadata(directory: Path) -> Path:
    """``classes.json`` beside the eval shards: class names, zero-shot templates, the label key."""
    return write_classes(directory, CLASSNAMES, ZERO_SHOT_TEMPLATES)
