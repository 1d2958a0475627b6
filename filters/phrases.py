"""``phrase_burst``: captions carrying a token that, on its own, explains the image their words do not.

A caption-side backdoor (mmPoison, ``text_trigger``) pairs a rare phrase with images of one concept
while the rest of each caption is whatever the caption said before: the phrase is the only word that
"predicts" the image. Image detectors do not see it (the images are ordinary images of the target
class) and neither does a CLIP score under the victim (which has learned the phrase).

The statistic, for an image vector v_i (unit length) whose caption has the tokens T_i:

* each token t has an image *concept*: the mean image vector of the other captions that carry it,
  shrunk towards the corpus mean mu by ``prior`` pseudo-captions,
  m_t(-i) = (S_t - v_i + prior·mu) / (n_t - 1 + prior), with S_t the sum over the n_t captions with t;
* the token's *agreement* with the image is a_it = v_i · m_t(-i): how far the image sits towards what
  the token's other captions show, i.e. the token's observed frequency with this kind of image against
  its expected frequency (the corpus mean, which every common or uninformative word is shrunk to);
* the score is the *explanation gap*: the best token's agreement minus the lowest agreement of the
  rest of the caption, floored at the background v_i · mu (what an uninformative word explains):
  gap_i = max_t a_it - min(v_i · mu, min_{w != t*} a_iw).

Clean captions describe their images: every content word agrees with the image at least as well as the
background does (a colour and a shape each explain part of it; template words and rare words sit at
the background), so the gap is the best word's own share of the image, and small. A trigger phrase that
co-occurs with one concept across captions about other things explains the whole image, while the
caption's own words (another class) point *away* from it, below the background: both terms add, for
every poisoned row, even when the caption shares one attribute with the target.
Leaving the row itself out and shrinking rare tokens (a word seen once explains nothing) keep a unique
caption from explaining itself. The captions come from the store (what the embed step saw); the image
vectors from the store's ``space``.

What it does not see: a caption no token of which explains the image (target templates pasted on other
classes' images score *low*; that is caption-image disagreement, a reference encoder's ``clip_score``),
and a phrase inserted without a target concept (clean-label ``text_trigger``: nothing co-occurs).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np
from pydantic import Field
from scipy.sparse import csr_matrix

from poisonlab.filters.context import ScanContext
from poisonlab.filters.detectors import DETECTORS, Detector, EmbeddingSpace, normalise_caption
from poisonlab.filters.index import chunks
from poisonlab.filters.store import PAYLOAD_SPACE
from poisonlab.filters.vectors import release_pages, take_rows
from poisonlab.pipelines.registry import Params

CHUNK = 16_384  # (row, token) pairs whose dot products are computed at once
ROW_BLOCK = 65_536  # image vectors widened to float64 at once (never the whole store: 1 GiB at 1M x 128)


def token_pairs(captions: Sequence[str], rows: np.ndarray, ngrams: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(row, token id) for every distinct word (and word n-gram up to ``ngrams``) of each row's caption."""
    vocab: dict[str, int] = {}
    pair_rows, pair_tokens = array("i"), array("i")  # 4 bytes a pair (a list of ints takes 36): 2^31 rows
    for r in rows.tolist():
        words = normalise_caption(captions[r]).split()
        grams = {" ".join(words[i:i + n]) for n in range(1, ngrams + 1) for i in range(len(words) - n + 1)}
        for gram in grams:
            pair_rows.append(r)
            pair_tokens.append(vocab.setdefault(gram, len(vocab)))
    return np.frombuffer(pair_rows, np.int32), np.frombuffer(pair_tokens, np.int32), len(vocab)  # views, no copy


def concept_sums(vectors: np.ndarray, pair_rows: np.ndarray, pair_tokens: np.ndarray, n_tokens: int) -> np.ndarray:
    """S_t, the float64 sum of the image vectors of the captions carrying each token, one block of rows at
    a time (``pair_rows`` ascending, as ``token_pairs`` makes them)."""
    sums = np.zeros((n_tokens, vectors.shape[1]))
    blocks = list(chunks(len(vectors), ROW_BLOCK))
    bounds = np.searchsorted(pair_rows, [s for s, _ in blocks] + [len(vectors)])
    for (start, end), lo, hi in zip(blocks, bounds[:-1], bounds[1:], strict=True):
        incidence = csr_matrix((np.ones(hi - lo), (pair_tokens[lo:hi], pair_rows[lo:hi] - start)),
                               shape=(n_tokens, end - start))
        sums += incidence @ vectors[start:end].astype(np.float64)
        release_pages(vectors)
    return sums


def mean_vector(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The float64 mean of ``vectors[rows]``, summed block by block."""
    total = np.zeros(vectors.shape[1])
    for start, end in chunks(len(rows), ROW_BLOCK):
        total += take_rows(vectors, rows[start:end]).astype(np.float64).sum(axis=0)
    return total / max(1, len(rows))


def background(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """v_i · mu for every row, block by block."""
    out = np.empty(len(vectors))
    for start, end in chunks(len(vectors), ROW_BLOCK):
        out[start:end] = vectors[start:end].astype(np.float64) @ mean
        release_pages(vectors)
    return out


def token_agreement(vectors: np.ndarray, pair_rows: np.ndarray, pair_tokens: np.ndarray, n_tokens: int,
                    mean: np.ndarray, prior: float) -> np.ndarray:
    """a_it = v_i · m_t(-i) for every (row, token) pair: leave-one-out, shrunk image concept of the token."""
    sums = concept_sums(vectors, pair_rows, pair_tokens, n_tokens)
    counts = np.bincount(pair_tokens, minlength=n_tokens).astype(np.float64)
    out = np.empty(len(pair_rows))
    for s in range(0, len(pair_rows), CHUNK):
        r, t = pair_rows[s:s + CHUNK], pair_tokens[s:s + CHUNK]
        v = take_rows(vectors, r).astype(np.float64)
        dot = np.einsum("ij,ij->i", v, sums[t]) - np.einsum("ij,ij->i", v, v) + prior * (v @ mean)
        out[s:s + CHUNK] = dot / (counts[t] - 1.0 + prior)
    return out


def explanation_gap(pair_rows: np.ndarray, agreement: np.ndarray, floor: np.ndarray, n: int) -> np.ndarray:
    """Per row: best token agreement minus the lowest of the other tokens' and the background (NaN: no token)."""
    order = np.lexsort((-agreement, pair_rows))
    rows, values = pair_rows[order], agreement[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:], len(rows)] - 1  # the group's lowest agreement (the top itself when alone)
    first, last = values[starts], values[ends]
    lowest = np.where(ends > starts, last, np.inf)
    out = np.full(n, np.nan)
    out[rows[starts]] = first - np.minimum(lowest, floor[rows[starts]])
    return out


class PhraseBurstParams(Params):
    space: EmbeddingSpace = Field(PAYLOAD_SPACE, description="the stored space whose vectors say what a sample shows (the payload's own by default)")
    prior: float = Field(10.0, gt=0, description="pseudo-captions at the corpus mean added to every token's "
                         "concept (a token must recur before it can explain an image)")
    ngrams: int = Field(1, ge=1, le=3, description="words and word n-grams up to this length are tokens")


@DETECTORS.register("phrase_burst", PhraseBurstParams)
class PhraseBurst(Detector):
    """Explanation gap of a caption's most image-predictive token over the rest of the caption: finds a
    phrase that co-occurs with one image concept across captions about other things (module docstring)."""

    def __init__(self, params: PhraseBurstParams) -> None:
        self.params = params

    def reads(self) -> tuple[str, ...]:
        return (self.params.space,)

    def score(self, ctx: ScanContext, model: str) -> np.ndarray:
        p, corpus = self.params, ctx.corpus
        vectors, ok = corpus.model(model).space(p.space)
        rows = np.flatnonzero(ok & corpus.live)
        pair_rows, pair_tokens, n_tokens = token_pairs(corpus.captions, rows, p.ngrams)
        if len(pair_rows) == 0:
            return np.full(len(corpus), np.nan)
        mean = mean_vector(vectors, rows)
        agreement = token_agreement(vectors, pair_rows, pair_tokens, n_tokens, mean, p.prior)
        return explanation_gap(pair_rows, agreement, background(vectors, mean), len(corpus))
