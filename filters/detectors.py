"""Detectors: each scores every sample of the dataset (higher = more suspicious; NaN = cannot score).

Registered by name with a typed parameter model (``get_registry("detector")``); ``poisonlab components
detector`` lists them. A detector sees the whole corpus through a ``ScanContext`` (global statistics such
as caption frequencies, or neighbourhoods over the whole dataset) and returns one score per corpus row.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from poisonlab.filters.context import NeighbourhoodKey, ScanContext
from poisonlab.filters.embedders import known_spaces
from poisonlab.filters.index import IndexParams, similar_pairs
from poisonlab.filters.neighbours import CROSS, space_reads
from poisonlab.filters.outliers import dao, slof
from poisonlab.filters.ranks import RankMethod, combine_ranks
from poisonlab.filters.store import PAYLOAD_SPACE
from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.pipelines.registry import Params, get_registry

DETECTORS = get_registry("detector")
CONCAT: dict[str, tuple[str, str]] = {"concat": (PAYLOAD_SPACE, "text")}  # both side by side


def _known(combined: dict[str, tuple[str, str]]):  # type: ignore[no-untyped-def]
    def check(space: str) -> str:
        known = known_spaces() | set(combined)
        if space not in known:
            raise ValueError(f"unknown space {space!r}; registered embedders produce: {', '.join(sorted(known))}")
        return space
    return check


NeighbourSpace = Annotated[str, AfterValidator(_known(CROSS))]
FeatureSpace = Annotated[str, AfterValidator(_known(CONCAT))]
EmbeddingSpace = Annotated[str, AfterValidator(_known({}))]


class Detector(ABC):
    """Scores the corpus rows; ``model`` names the embeddings to use (the primary store by default).

    A detector declares its inputs: ``reads()`` the embedding spaces (checked against the store before
    any work) and ``uses`` the score columns of other detectors (ensembles; the scan orders by them).
    """

    uses: tuple[str, ...] = ()  # score columns this detector reads (ensembles)

    def reads(self) -> tuple[str, ...]:
        """Embedding spaces this detector needs from its store."""
        return ()

    def plan(self, ctx: ScanContext, model: str) -> None:  # noqa: B027 - optional hook
        """Announce shared work (neighbour graphs) before any detector runs."""

    @abstractmethod
    def score(self, ctx: ScanContext, model: str) -> np.ndarray: ...


# --- embedding agreement --------------------------------------------------------------------------


class ClipScoreParams(Params):
    pass


@DETECTORS.register("clip_score", ClipScoreParams)
class ClipScore(Detector):
    """1 - cos(image, own caption): DataComp's CLIP score, inverted so that higher is more suspicious."""

    def __init__(self, params: ClipScoreParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return (PAYLOAD_SPACE, "text")

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        view = ctx.corpus.model(model)
        (image, image_ok), (text, text_ok) = view.space(PAYLOAD_SPACE), view.space("text")
        both = image_ok & text_ok
        out = np.full(len(both), np.nan)
        out[both] = 1.0 - np.einsum("ij,ij->i", image[both], text[both]).astype(np.float64)
        return out


# --- local outlier detectors over neighbourhoods (Huang et al., ICLR 2025) -----------------------------


class KnnParams(Params):
    k: int = Field(16, ge=1, description="neighbours")
    space: NeighbourSpace = Field(PAYLOAD_SPACE, description="a stored space (image, graph, text, ...), sample (the payload's own: image or graph) or cross (the payload among payloads and captions)")
    mode: Literal["global", "batch_local"] = Field("global", description="global (FAISS over the whole dataset) or batch_local (Huang et al.)")
    batch_size: int = Field(1024, ge=2, description="batch_local: rows per keyed batch")
    seed: int = Field(0, description="batch_local: seed of the keyed shuffle")
    index: IndexParams = Field(default_factory=IndexParams, description="global: FAISS index settings")


class KnnDetector(Detector):
    # whether the detector reads who the neighbours are (its own k-distance alone needs only the distances)
    reads_lists: bool = True

    def __init__(self, params: KnnParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return space_reads(self.params.space)

    def key(self, model: str) -> NeighbourhoodKey:
        p = self.params
        if p.mode == "batch_local":
            return NeighbourhoodKey(model, p.space, p.mode, batch_size=p.batch_size, seed=p.seed)
        return NeighbourhoodKey(model, p.space, p.mode, index=p.index)

    def plan(self, ctx: ScanContext, model: str) -> None:
        ctx.plan(self.key(model), self.params.k, lists=self.reads_lists)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        key, k = self.key(model), self.params.k
        graph = ctx.graph(key, k) if self.reads_lists else ctx.kth_graph(key, k)
        return ctx.scatter(graph, self.from_graph(ctx, key, graph.dist, graph.ids, k))

    @abstractmethod
    def from_graph(self, ctx: ScanContext, key: NeighbourhoodKey, dist: np.ndarray, ids: np.ndarray,
                   k: int) -> np.ndarray: ...


@DETECTORS.register("kdist", KnnParams)
class KDistance(KnnDetector):
    """Distance to the k-th nearest other sample: backdoor pairs sit in sparse neighbourhoods."""

    reads_lists = False

    def from_graph(self, ctx, key, dist, ids, k):  # type: ignore[no-untyped-def]
        return ctx.kdist(key, k)  # from the graph kth_graph chose: the k-th column, or the only one


@DETECTORS.register("slof", KnnParams)
class SimplifiedLOF(KnnDetector):
    """Simplified local outlier factor: own k-distance relative to the neighbours' k-distances."""

    def from_graph(self, ctx, key, dist, ids, k):  # type: ignore[no-untyped-def]
        return slof(dist, ids, k, ctx.kdist(key, k))


class LidParams(KnnParams):
    estimator: Literal["mle", "mom"] = Field("mle", description="mle (maximum likelihood) or mom (method of moments)")


@DETECTORS.register("lid", LidParams)
class LocalIntrinsicDimensionality(KnnDetector):
    """Local intrinsic dimensionality estimated from the k nearest distances."""

    def from_graph(self, ctx, key, dist, ids, k):  # type: ignore[no-untyped-def]
        return ctx.lid(key, k, self.params.estimator)


class DaoParams(LidParams):
    aggregate: Literal["mean_power", "mean_log"] = Field(
        "mean_power", description="mean_power (the paper's DAO) or mean_log (Huang et al.'s code)")


@DETECTORS.register("dao", DaoParams)
class DimensionalityAwareOutlier(KnnDetector):
    """Dimensionality-aware outlier score (ln DAO): density ratios raised to the neighbours' LID."""

    def from_graph(self, ctx, key, dist, ids, k):  # type: ignore[no-untyped-def]
        p = self.params
        return dao(dist, ids, k, ctx.kdist(key, k), ctx.lid(key, k, p.estimator), p.aggregate)


# --- global baselines on the embeddings ---------------------------------------------------------------


def feature_reads(space: str) -> tuple[str, ...]:
    return CONCAT.get(space, (space,))


def features(ctx: ScanContext, model: str, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows that have the features, and the features (one space, or ``concat``: several side by side)."""
    view = ctx.corpus.model(model)
    parts = [view.space(s) for s in feature_reads(space)]
    ok = np.logical_and.reduce([mask for _, mask in parts])
    rows = np.flatnonzero(ok)
    return rows, np.hstack([vectors[rows] for vectors, _ in parts]) if len(parts) > 1 else parts[0][0][rows]


class IsolationForestParams(Params):
    space: FeatureSpace = PAYLOAD_SPACE
    n_estimators: int = Field(100, ge=1)
    max_samples: int = Field(256, ge=2, description="samples per tree")
    fit_samples: int = Field(100_000, ge=2, description="rows the forest is fitted on (a keyed sample)")
    seed: int = 0
    n_jobs: int = Field(1, ge=1)


@DETECTORS.register("isolation_forest", IsolationForestParams)
class IsolationForestDetector(Detector):
    """scikit-learn's isolation forest on the embeddings (a global, density-free baseline)."""

    def __init__(self, params: IsolationForestParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return feature_reads(self.params.space)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        from sklearn.ensemble import IsolationForest

        p = self.params
        rows, x = features(ctx, model, p.space)
        out = np.full(len(ctx.corpus), np.nan)
        if len(rows) < 2:
            return out
        fit = x
        if len(x) > p.fit_samples:
            fit = x[np.sort(keyed_rng(p.seed, "filters/isolation_forest", "fit").choice(len(x), p.fit_samples, replace=False))]
        forest = IsolationForest(n_estimators=p.n_estimators, max_samples=min(p.max_samples, len(fit)),
                                 random_state=p.seed, n_jobs=p.n_jobs).fit(fit)
        out[rows] = np.concatenate([-forest.score_samples(x[s:s + 65536]) for s in range(0, len(x), 65536)])
        return out


class SpectralParams(Params):
    space: FeatureSpace = PAYLOAD_SPACE
    components: int = Field(1, ge=1, description="top singular directions whose squared projections are summed")
    clusters: int = Field(1, ge=1, description="k-means clusters, each with its own signature (Tran et al. use classes)")
    seed: int = 0


@DETECTORS.register("spectral", SpectralParams)
class SpectralSignature(Detector):
    """Spectral signatures (Tran et al., 2018): squared projection on the top directions of the centred data."""

    def __init__(self, params: SpectralParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return feature_reads(self.params.space)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        import faiss

        p = self.params
        rows, x = features(ctx, model, p.space)
        out = np.full(len(ctx.corpus), np.nan)
        groups = np.zeros(len(rows), np.int64)
        if p.clusters > 1 and len(rows) > p.clusters:
            km = faiss.Kmeans(x.shape[1], p.clusters, niter=20, seed=p.seed, verbose=False)
            km.train(np.ascontiguousarray(x))
            groups = km.index.search(np.ascontiguousarray(x), 1)[1][:, 0]
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            centred = x[members] - x[members].mean(axis=0, keepdims=True)
            cov = (centred.T @ centred).astype(np.float64)
            _, vecs = np.linalg.eigh(cov)
            top = vecs[:, ::-1][:, : p.components].astype(np.float32)
            out[rows[members]] = np.sum((centred @ top).astype(np.float64) ** 2, axis=1)
        return out


# --- repetition: captions and images that occur far more often than they should -----------------------------


_PUNCT = re.compile(r"[^\w\s]+")


def normalise_caption(text: str) -> str:
    """Case, Unicode form, punctuation and spacing do not make a caption different."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCT.sub(" ", folded).split())


def group_sizes(n: int, first: np.ndarray, second: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the pair graph: component id per node and (weighted) size per node."""
    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    w = np.ones(n) if weights is None else weights
    sizes = np.bincount(labels, weights=w)
    return labels, sizes[labels]


class CaptionFrequencyParams(Params):
    near_duplicate: float | None = Field(
        0.95, gt=0, le=1, description="cosine of text embeddings above which captions count as one (None: exact only)")
    index: IndexParams = Field(default_factory=IndexParams)


@DETECTORS.register("caption_frequency", CaptionFrequencyParams)
class CaptionFrequency(Detector):
    """log2 of how many times more often a caption (normalised, near-duplicates merged) occurs than the median caption."""

    def __init__(self, params: CaptionFrequencyParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return ("text",) if self.params.near_duplicate is not None else ()

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        corpus = ctx.corpus
        out = np.full(len(corpus), np.nan)
        rows = [i for i, c in enumerate(corpus.captions) if corpus.live[i] and c.strip()]
        if not rows:
            return out
        norm = [normalise_caption(corpus.captions[i]) for i in rows]
        unique: dict[str, int] = {}
        first_row: list[int] = []
        for i, text in zip(rows, norm, strict=True):
            if text not in unique:
                unique[text] = len(unique)
                first_row.append(i)
        caption_of_row = np.array([unique[t] for t in norm], np.int64)
        counts = np.bincount(caption_of_row, minlength=len(unique)).astype(np.float64)
        sizes = counts
        if self.params.near_duplicate is not None:
            vectors, embedded_ok = corpus.model(model).space("text")
            firsts = np.array(first_row, np.int64)
            embedded = np.flatnonzero(embedded_ok[firsts])
            if len(embedded) > 1:
                a, b = similar_pairs(vectors[firsts[embedded]], self.params.near_duplicate, self.params.index)
                _, merged = group_sizes(len(embedded), a, b, counts[embedded])
                sizes = counts.copy()
                sizes[embedded] = merged
        freq = sizes[caption_of_row]
        out[np.array(rows)] = np.log2(freq / np.median(freq))
        return out


class ImageDuplicatesParams(Params):
    space: EmbeddingSpace = Field(PAYLOAD_SPACE, description="the stored space compared (the payload's own by default)")
    threshold: float = Field(0.95, gt=0, le=1, description="cosine above which two images are near-duplicates")
    index: IndexParams = Field(default_factory=IndexParams)


@DETECTORS.register("image_duplicates", ImageDuplicatesParams)
class ImageDuplicates(Detector):
    """How many other images belong to the same near-duplicate cluster (range search, then components)."""

    def __init__(self, params: ImageDuplicatesParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return (self.params.space,)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        vectors, ok = ctx.corpus.model(model).space(self.params.space)
        rows = np.flatnonzero(ok)
        out = np.full(len(ctx.corpus), np.nan)
        if len(rows) == 0:
            return out
        a, b = similar_pairs(vectors[rows], self.params.threshold, self.params.index) if len(rows) > 1 else (
            np.zeros(0, np.int64), np.zeros(0, np.int64))
        _, sizes = group_sizes(len(rows), a, b)
        out[rows] = sizes - 1.0
        return out


# --- provenance ------------------------------------------------------------------------------------------------


class HashMismatchParams(Params):
    pass


_MISMATCH = re.compile(r"hash[ _]mismatch", re.IGNORECASE)


@DETECTORS.register("hash_mismatch", HashMismatchParams)
class HashMismatch(Detector):
    """1 where ingest found the downloaded bytes differ from the URL list's hash (split-view poisoning), else 0."""

    def __init__(self, params: HashMismatchParams) -> None:
        self.params = params

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        c = ctx.corpus
        flagged = [h == "mismatch" or s == "hash_mismatch" or bool(_MISMATCH.search(r))
                   for h, s, r in zip(c.hash_status, c.source_status, c.reasons, strict=True)]
        return np.asarray(flagged, dtype=np.float64)


# --- combining detectors ---------------------------------------------------------------------------------------


class EnsembleParams(Params):
    detectors: list[str] = Field(..., min_length=1, description="score columns to combine")
    method: RankMethod = "rank_mean"
    weights: list[float] | None = Field(None, description="rank_mean: one weight per detector")


@DETECTORS.register("ensemble", EnsembleParams)
class Ensemble(Detector):
    """Rank average or maximum of other detectors' scores (ranks make incomparable scales comparable)."""

    def __init__(self, params: EnsembleParams) -> None:
        if params.weights is not None and len(params.weights) != len(params.detectors):
            raise ValueError("ensemble: give one weight per detector")
        self.params = params
        self.uses = tuple(params.detectors)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        for name in self.uses:
            if name not in ctx.columns:
                raise KeyError(f"ensemble needs the score column {name!r}, which this scan does not compute")
        return combine_ranks([ctx.columns[name] for name in self.uses], self.params.method, self.params.weights)
