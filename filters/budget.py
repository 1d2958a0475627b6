"""A neighbour index chosen to fit a memory budget, split into index shards when one worker cannot hold it.

As autofaiss does, the codes are picked by what fits: the exact vectors (``flat``) when they fit one
worker's budget, else an inverted file over a PCA projection with 8-bit scalar codes (``sq8``), else product
quantisation codes (``pq``, the largest number of sub-quantisers that fits). Compressed codes are always
re-ranked on exact vectors (the refinement): held next to the codes when those fit the budget too
(``refine="memory"``), else read back from the vector source for the few candidates of each query
(``refine="source"``). When even the most compact codes exceed one worker's budget, or codes were forced,
the index is split into index shards: contiguous row ranges, each small enough for one worker. Shard
boundaries depend only on the sizes and the budget, never on how many workers there are, so results do
not either.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

ID_BYTES = 8  # an inverted list stores an int64 id next to each code
PQ_CENTROIDS = 256  # 8-bit product quantisation codes
MIN_SHARD_ROWS = 1_000  # below this a shard's k-means and lists are mostly overhead
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: str | int | float | None) -> int | None:
    """``"4GiB"``, ``"512MB"``, ``"1e9"`` or a number of bytes -> bytes (None stays None: no budget)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        size = int(value)
    else:
        match = _SIZE.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            try:
                size = int(float(value))
            except ValueError:
                raise ValueError(f"not a memory size: {value!r} (use e.g. 4GiB, 512MB or a number of bytes)") from None
        else:
            size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a memory budget must be positive, got {value!r}")
    return size


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@dataclasses.dataclass(frozen=True)
class CodeSpec:
    """How one kind of code stores a vector: bytes per vector (given the dimension the codes are built on,
    and the PQ sub-quantisers), fixed bytes per index (centroids, codebooks), and the FAISS factory."""

    bytes_per_vector: Callable[[int, int], int]
    fixed_bytes: Callable[[int, int, int], int]  # (dim, nlist, pq_m)
    factory: Callable[[int, int], str]  # (nlist, pq_m) -> factory suffix after the projection
    compressed: bool
    refine_factor: float  # candidates re-ranked exactly, as a multiple of IndexParams.refine


def _ivf_fixed(dim: int, nlist: int, pq_m: int) -> int:
    return nlist * dim * 4 + nlist * 64  # centroids, list headers


CODES: dict[str, CodeSpec] = {
    "flat": CodeSpec(lambda d, m: 4 * d, lambda d, nl, m: 0, lambda nl, m: "Flat", False, 0.0),
    "sq8": CodeSpec(lambda d, m: d + ID_BYTES, lambda d, nl, m: _ivf_fixed(d, nl, m) + 8 * d,
                    lambda nl, m: f"IVF{nl},SQ8", True, 1.0),
    "pq": CodeSpec(lambda d, m: m + ID_BYTES, lambda d, nl, m: _ivf_fixed(d, nl, m) + PQ_CENTROIDS * d * 4,
                   lambda nl, m: f"IVF{nl},PQ{m}", True, 4.0),
}
CODE_ORDER = ("flat", "sq8", "pq")  # best recall first: auto takes the first that fits


@dataclasses.dataclass(frozen=True)
class IndexPlan:
    """The chosen index: codes, the dimension they are built on, lists, index shards (row ranges),
    where refinement reads exact vectors, and the memory each shard is expected to hold."""

    codes: str
    dim: int  # dimension of the stored vectors
    code_dim: int  # dimension the codes are built on (the PCA projection's, or dim)
    pq_m: int
    shards: tuple[tuple[int, int], ...]
    refine: str  # none, memory or source
    bytes_per_shard: int
    budget: int

    @property
    def label(self) -> str:
        if self.codes == "flat":
            return "flat"
        code = f"pq{self.pq_m}" if self.codes == "pq" else self.codes
        proj = f"pca{self.code_dim}-" if self.code_dim != self.dim else ""
        return f"ivf-{proj}{code}"

    def describe(self) -> dict[str, Any]:
        return {"codes": self.label, "shards": len(self.shards), "rows_per_shard": max(e - s for s, e in self.shards),
                "refine": self.refine, "memory_per_shard": self.bytes_per_shard,
                "memory_per_shard_text": format_bytes(self.bytes_per_shard), "budget": self.budget,
                "budget_text": format_bytes(self.budget)}


def auto_nlist_for(rows: int, total: int | None = None) -> int:
    """Inverted lists for a shard of ``rows`` out of ``total``: about sqrt(4 total), a power of two, at most
    one per 39 rows of the shard. Lists sized by the whole set keep each shard's lists as dense in space as
    one index's would be, so probing the same number of lists per shard scans the same share of each."""
    target = math.sqrt(max(1, 4 * (total or rows)))
    nlist = 2 ** round(math.log2(max(16.0, target)))
    return int(max(1, min(nlist, rows // 39)))


def auto_nprobe_for(total: int) -> int:
    """Lists probed per query and shard: 8 up to 200k vectors in all, 4 above (as the single index)."""
    return 8 if total <= 200_000 else 4


def pq_choices(code_dim: int) -> list[int]:
    """Sub-quantiser counts that divide the dimension into pieces of 2 or more, most bytes (best recall) first."""
    return [m for m in (64, 48, 32, 24, 16, 8, 4) if 2 * m <= code_dim and code_dim % m == 0]


def estimate_bytes(codes: str, rows: int, dim: int, code_dim: int, pq_m: int, refine_in_memory: bool,
                   total: int | None = None) -> int:
    """Memory one index shard of ``rows`` vectors (of ``total``) holds: codes, lists, centroids, projection,
    exact copies for refining."""
    spec = CODES[codes]
    nlist = auto_nlist_for(rows, total) if spec.compressed else 0
    total = rows * spec.bytes_per_vector(code_dim, pq_m) + spec.fixed_bytes(code_dim, nlist, pq_m)
    if spec.compressed and code_dim != dim:
        total += dim * code_dim * 4  # the projection matrix
    if refine_in_memory:
        total += rows * dim * 4
    return int(total)


def split_rows(n: int, shards: int) -> tuple[tuple[int, int], ...]:
    """``shards`` contiguous row ranges of (nearly) equal size covering 0..n."""
    bounds = [round(i * n / shards) for i in range(shards + 1)]
    return tuple((bounds[i], bounds[i + 1]) for i in range(shards))


def _plan(codes: str, n: int, dim: int, code_dim: int, pq_m: int, budget: int, shards: int) -> IndexPlan | None:
    """The plan for ``codes`` in ``shards`` shards if it fits the budget (refining from memory when it can)."""
    rows = math.ceil(n / shards)
    compressed = CODES[codes].compressed
    for in_memory in ((True, False) if compressed else (False,)):
        size = estimate_bytes(codes, rows, dim, code_dim, pq_m, in_memory, n)
        if size <= budget:
            refine = ("memory" if in_memory else "source") if compressed else "none"
            return IndexPlan(codes, dim, code_dim if compressed else dim, pq_m, split_rows(n, shards), refine,
                             size, budget)
    return None


def _candidates(codes: str, dim: int, pca_dim: int) -> list[tuple[str, int, int]]:
    """(codes, code_dim, pq_m) to try for one kind of code, best recall first."""
    code_dim = pca_dim if CODES[codes].compressed and 0 < pca_dim < dim else dim
    if codes == "pq":
        return [("pq", code_dim, m) for m in pq_choices(code_dim)]
    return [(codes, code_dim, 0)]


def choose_plan(n: int, dim: int, budget: int, codes: str = "auto", pca_dim: int = 0,
                fallback: str = "sq8") -> IndexPlan:
    """The best codes that fit one worker's ``budget``; when none does (or ``codes`` is forced and does not
    fit), the fewest index shards of ``fallback`` (or the forced codes) that each fit it."""
    if codes != "auto" and codes not in CODES:
        raise ValueError(f"unknown codes {codes!r}; use auto or one of {', '.join(CODES)}")
    kinds = CODE_ORDER if codes == "auto" else (codes,)
    whole = [c for kind in kinds for c in _candidates(kind, dim, pca_dim)]
    split = _candidates(fallback if codes == "auto" else codes, dim, pca_dim)
    most = max(1, n // MIN_SHARD_ROWS)
    for shards, options in [(1, whole), *((s, split) for s in range(2, most + 1))]:
        for name, code_dim, pq_m in options:  # the fewest shards, then the best recall
            plan = _plan(name, n, dim, code_dim, pq_m, budget, shards)
            if plan is not None:
                return plan
    raise ValueError(f"{n} x {dim} vectors do not fit a budget of {format_bytes(budget)} per worker even in {most} "
                     f"index shards of {split[-1][0]} codes; raise the index memory")
