"""Decoding a shard's samples in other processes, for an accelerator that one process cannot feed.

On an H100 ``embed`` stopped at about 1,000 pairs/s whatever the number of input threads: the parts of the
input side that hold the GIL (Pillow's header parsing, tar reading, the per-sample bookkeeping) queue for it
(``benchmarks/results/2026-12-06-gpu.md``). Here the decoding moves to a pool of processes, each with its
own GIL. The shard is still read once, in this process and in order, so the accounting and the row
bookkeeping stay where they are; its live samples go to the pool in chunks, and their ``Decoded`` come back
in the order they went, so the batches, every float and the store's bytes are those of decoding here.

The workers never set an embedder up (no model is loaded in them): an embedder allows this with
``decodes_in_processes``, meaning its ``decode`` needs only its parameters and returns what pickles. The
workers start with ``spawn`` (a process that has initialised CUDA cannot fork safely) and stay for the life
of this process, one pool per size. A daemonic process (a Dask worker's) may not have children: there the
embed step decodes in threads. A worker that dies (a decoder crashing on a hostile payload) fails the
shard with one line, and the next shard gets a fresh pool; this process is not taken down with it. That
contains a crash, not a compromise: the decoded inputs come back pickled, as between any two Python
processes (Dask's included), so a decoder made to run code in a worker is no safer than one in this process.
Nothing a stranger wrote is unpickled: only what the worker's own ``decode`` returned.
"""

from __future__ import annotations

import atexit
import dataclasses
import multiprocessing
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice, tee

from pydantic import BaseModel

from poisonlab.filters.embedders import Decoded, Embedder
from poisonlab.pipelines.ordered_jobs import Job, in_order
from poisonlab.pipelines.sample import Sample

CHUNK = 32  # samples a worker decodes per request: large enough that a request's overhead is small
MAX_INPUT_PROCESSES = 8  # a bound, not a measured optimum: the reading and bookkeeping stay in one process

_POOLS: dict[int, ProcessPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


class InputProcessError(RuntimeError):
    """A decoding process died (the shard fails; the next one starts a fresh pool)."""


def can_start_processes() -> bool:
    """Whether this process may have children (a Dask worker's process is daemonic and may not)."""
    return not multiprocessing.current_process().daemon


def _pool(processes: int) -> ProcessPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(processes)
        if pool is None:
            pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
            _POOLS[processes] = pool
        return pool


def _forget_pool(processes: int, pool: ProcessPoolExecutor) -> None:
    with _POOLS_LOCK:
        if _POOLS.get(processes) is pool:
            del _POOLS[processes]
    pool.shutdown(wait=False, cancel_futures=True)


@atexit.register
def shutdown_pools() -> None:
    """Stop every pool's workers (at exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


_WORKER_EMBEDDERS: dict[tuple[type, str], Embedder] = {}


def _decode_chunk(factory: type[Embedder], params: BaseModel, samples: list[Sample]) -> list[Decoded]:
    """In a worker: the embedder of these parameters, never set up, decodes each sample."""
    key = (factory, params.model_dump_json())
    embedder = _WORKER_EMBEDDERS.get(key)
    if embedder is None:
        embedder = _WORKER_EMBEDDERS[key] = factory(params)
    return [embedder.decode(sample) for sample in samples]


def _sendable(sample: Sample) -> Sample:
    """The sample with plain-dict metadata (a read-only mapping view does not pickle)."""
    return dataclasses.replace(sample, meta=dict(sample.meta))


def _chunks(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    it = iter(samples)
    while chunk := list(islice(it, size)):
        yield chunk


def _died(processes: int, pool: ProcessPoolExecutor, exc: BaseException) -> InputProcessError:
    _forget_pool(processes, pool)
    return InputProcessError(f"a decoding process died ({exc}); rerun the shard, or set input_processes=0 to "
                             "decode in this process")


def _job(factory: type[Embedder], params: BaseModel, chunk: list[Sample]) -> Job[list[Decoded]] | list[Decoded]:
    """The chunk's live samples to decode in a worker (nothing to send when none is live)."""
    live = [_sendable(s) for s in chunk if s.is_live]
    return Job(_decode_chunk, factory, params, live) if live else []


def _paired(chunk: list[Sample], decoded: list[Decoded]) -> Iterator[tuple[Sample, Decoded | None]]:
    results = iter(decoded)
    for sample in chunk:
        yield sample, next(results) if sample.is_live else None


def decoded_in_processes(samples: Iterable[Sample], embedder: Embedder, processes: int,
                         chunk: int = CHUNK) -> Iterator[tuple[Sample, Decoded | None]]:
    """Each sample with the embedder's ``Decoded`` (None when it is not live), decoded in ``processes``
    processes, in the order the samples came; at most ``4 * processes`` chunks are in flight
    (``pipelines.ordered_jobs.in_order`` over the pool)."""
    pool = _pool(processes)
    chunks, to_send = tee(_chunks(samples, chunk))
    jobs = (_job(type(embedder), embedder.params, part) for part in to_send)
    results = in_order(jobs, processes, 4 * processes, executor=pool)
    try:
        for part, decoded in zip(chunks, results, strict=True):
            yield from _paired(part, decoded)
    except BrokenProcessPool as exc:
        raise _died(processes, pool, exc) from None
    finally:
        results.close()  # cancels the chunks not started
