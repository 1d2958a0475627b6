"""One BLAS/OpenMP thread while an index shard builds or searches, wherever it runs.

BLAS splits a matrix product differently for another number of threads, so the same dot product can come
out different in the last bit; PCA, k-means, scalar codes and the coarse search then settle a near-tie the
other way. A Dask worker runs one thread (``OMP_NUM_THREADS=1``), a driver as many as it has cores: pinning
an index shard's own work to one thread makes a shard built and searched anywhere the same shard, so a scan
writes the same bytes in-process and on any cluster. Shards are the scale path, where each worker has one
core anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import faiss


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """FAISS's OpenMP and every BLAS/OpenMP pool in the process at one thread, restored afterwards."""
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(before)
