"""The embedding step: one task per shard runs a registered embedder over every sample.

The embed step is modality-free: it reads shards with the folder's read policy (``read_policy_for``), asks
the embedder to decode each live sample into per-space inputs, batches each space, and writes one array
per space. A sample that was not live, or whose payload the embedder cannot read, gets no embedding in
that space and a recorded reason, never a silent drop. A shard's embeddings are written under a temporary
name and renamed into place, with the digest of the tar they came from: a rerun skips them, and a changed
shard is an error rather than a silent mix of versions.

Float results of a CPU forward pass depend (in the last bits) on torch's thread count and on how samples
are batched, so both are part of the configuration, not of the machine: ``threads`` defaults to 1 (the
parallelism is one worker per core) and batches never cross shards, so the same config writes the same
bytes with any number of workers. Reading, decoding and the embedder's ``prepare`` (pixels, tokens) may run
in a thread ahead of the model (``read_ahead``), and an embedder that allows it (``concurrent_batches``) may
run several batches at once in threads (``streams``, each batch on ``threads`` torch threads: the
in-process runner lends its CPUs this way, while the reading thread prepares the next batches). On an
accelerator, where one reading thread cannot keep the model busy, an embedder that allows it
(``concurrent_inputs``) decodes samples and prepares batches in several threads (``input_threads``), their
results taken in order. None of these changes the batches or their floats, only when the CPU does the work.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from poisonlab.filters import open_clip_embedder as _open_clip  # noqa: F401  (registers the default embedder)
from poisonlab.filters.embedders import DEFAULT_EMBEDDER, Decoded, Embedder, create_embedder, resolve_params
from poisonlab.filters.input_processes import MAX_INPUT_PROCESSES, can_start_processes, decoded_in_processes
from poisonlab.filters.specs import parse_spec
from poisonlab.filters.store import (
    STORE_DTYPES,
    EmbeddingMismatchError,
    ShardEmbeddings,
    StoreInfo,
    read_shard_digest,
    read_shard_embeddings,
    shard_file,
    source_digest,
    write_info,
    write_shard,
)
from poisonlab.models.zoo import LoadedModel, ModelSpec
from poisonlab.pipelines.accounting import ShardStats, StageCounts, reason_category
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.ordered_jobs import Job, in_order, lent_cpus
from poisonlab.pipelines.prefetch import prefetched
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.visibility import TaskPaths
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.fingerprint import dataset_ref
from poisonlab.shards.images import DEFAULT_MAX_PIXELS
from poisonlab.shards.layout import list_shards
from poisonlab.shards.plan import FolderSource

STAGE = "embed"
HASH_TYPES = ("md5", "sha256", "sha512")


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Which embedder, and how to run it.

    ``embedder`` is a spec (``name[:key=value,...]`` or JSON, as for detectors). ``model`` and the run
    settings below are handed to the embedder when its parameters declare them (open_clip takes them all).
    """

    model: ModelSpec | None = None
    batch_size: int = 256
    dtype: Literal[STORE_DTYPES] = STORE_DTYPES[0]  # type: ignore[valid-type]  # storage; computed in float32 on CPUs
    device: str | None = None  # None: cuda when available, else cpu
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 autocast on CUDA, fp32 on CPU
    threads: int = 1  # torch CPU threads per worker: float results depend on it, so it is fixed
    # read and decode in a thread ahead of the model (the same bytes either way). None: when the model runs on
    # an accelerator or on one CPU thread; with more threads on 2 cores the reader cost the model the GIL
    # and a core (tiny CLIP at 2 threads 911 -> 833 pairs/s; at 1 thread 523 -> 568: README, embedding)
    read_ahead: bool | None = None
    # batches the model runs at once, each in its own thread on ``threads`` torch threads (each batch's floats
    # are the same whichever thread runs it). None: as many as the CPUs the runner lends hold (the in-process
    # runner lends the machine's; a Dask worker keeps to one): on 2 cores tiny CLIP ran 1.2x faster as two
    # 1-thread streams than as one 2-thread model (benchmarks/results/2026-12-06-codec-threads.md)
    streams: int | None = None
    # threads that decode samples and prepare batches (pixels, tokens) ahead of the model, for an embedder that
    # allows it (``concurrent_inputs``). None: on an accelerator, the CPUs the runner lends, since one reading
    # thread cannot feed a GPU; on the CPU, 1 (the model's streams hold the cores). The same bytes either way
    input_threads: int | None = None
    # processes that decode samples (each with its own GIL), for an embedder whose ``decode`` needs no model
    # (``decodes_in_processes``). None: on an accelerator, one fewer than the CPUs the runner lends (at most
    # 8), since one process's input side stopped an H100 at ~1,000 pairs/s; on the CPU none (the model's
    # streams hold the cores); in a Dask worker none (its process may not have children). The same bytes
    input_processes: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0  # initialisation of random weights
    embedder: str = DEFAULT_EMBEDDER

    def __post_init__(self) -> None:
        for name in ("threads", "streams", "input_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} ({value}) must be at least 1")
        if self.input_processes is not None and self.input_processes < 0:
            raise ValueError(f"input_processes ({self.input_processes}) must be 0 or more")

    def embedder_name(self) -> str:
        return parse_spec(self.embedder)[1]

    def embedder_params(self) -> BaseModel:
        _, name, options = parse_spec(self.embedder)
        shared: dict[str, Any] = {"device": self.device, "precision": self.precision, "seed": self.seed,
                                  "max_pixels": self.max_pixels, "batch_size": self.batch_size}
        if self.model is not None:
            shared.update(arch=self.model.arch, weights=self.model.weights)
        return resolve_params(name, shared, options)


_EMBEDDERS: dict[tuple[str, str], Embedder] = {}


def cached_embedder(config: EmbedConfig) -> Embedder:
    """The embedder of this config, created and set up once per process."""
    params = config.embedder_params()
    key = (config.embedder_name(), json.dumps(params.model_dump(mode="json"), sort_keys=True))
    if key not in _EMBEDDERS:
        embedder = create_embedder(key[0], params)
        embedder.setup()
        _EMBEDDERS[key] = embedder
    return _EMBEDDERS[key]


def cached_model(config: EmbedConfig) -> LoadedModel:
    """The open_clip model behind an open_clip config (benchmarks time it without the pipeline)."""
    loaded = getattr(cached_embedder(config), "loaded", None)
    if loaded is None:
        raise ValueError(f"embedder {config.embedder_name()!r} holds no open_clip model")
    return loaded


def _hash_status(meta: dict[str, Any]) -> str:
    for h in HASH_TYPES:
        expected, got = meta.get(f"expected_{h}"), meta.get(f"download_{h}")
        if expected and got:
            return "match" if str(expected).lower() == str(got).lower() else "mismatch"
    return ""


class _Rows:
    """A shard's rows as the embed step sees them; each space's decoded inputs wait in ``pending`` (with their
    row numbers) until a batch of them is handed on."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.captions: list[str] = []
        self.live: list[bool] = []
        self.status: list[str] = []
        self.reasons: list[str] = []
        self.source_status: list[str] = []
        self.hash_status: list[str] = []
        self.pending: dict[str, list[tuple[int, Any]]] = {}

    def add(self, sample: Sample, decoded: Decoded | None) -> str:
        """Record a sample and its decoded inputs (None when it is not live); returns why it lacks an
        embedding ("" when it has every space)."""
        row = len(self.keys)
        self.keys.append(sample.key)
        self.captions.append(sample.text or "")
        self.live.append(sample.is_live)
        self.status.append(sample.status)
        self.source_status.append(str(sample.meta.get("source_status") or ""))
        self.hash_status.append(_hash_status(dict(sample.meta)))
        if decoded is None:
            why = [f"not_live: {sample.reason or sample.status}"]
        else:
            for space, value in decoded.inputs.items():
                self.pending.setdefault(space, []).append((row, value))
            why = [f"{STAGE}: {m}" for m in decoded.missing]
        self.reasons.append("; ".join(why))
        return why[0] if why else ""


RawBatch = tuple[str, list[int], list[Any]]  # a space, its samples' rows, their decoded inputs
Batch = tuple[str, list[int], Mapping[str, Any]]  # a space, its samples' rows, what the embedder prepared of them


def _decoded(embedder: Embedder, sample: Sample) -> tuple[Sample, Decoded | None]:
    return sample, embedder.decode(sample) if sample.is_live else None


def _prepared(embedder: Embedder, batch: RawBatch) -> Batch:
    space, at, values = batch
    return space, at, embedder.prepare({space: values})


def _raw_batches(decoded: Iterable[tuple[Sample, Decoded | None]], rows: _Rows, dims: Iterable[str],
                 batch_size: int, stats: ShardStats) -> Iterator[RawBatch]:
    """Record the shard's decoded samples in ``rows``, yielding each space's batches as they fill.

    A space's batches are its inputs in row order, ``batch_size`` at a time (the last one shorter), the
    same whatever runs the decoding: the floats depend on how samples are batched.
    """
    dims = list(dims)

    def ready(space: str, final: bool) -> Iterator[RawBatch]:
        pending = rows.pending.get(space, [])
        while len(pending) >= batch_size or (final and pending):
            batch, pending[:] = pending[:batch_size], pending[batch_size:]
            yield space, [row for row, _ in batch], [value for _, value in batch]

    for sample, inputs in decoded:
        stats.samples += 1
        stats.by_status[sample.status] += 1
        why = rows.add(sample, inputs)
        if why:
            stats.reasons[reason_category(why)] += 1
        for space in dims:
            yield from ready(space, final=False)
    for space in dims:
        yield from ready(space, final=True)


def _prepared_batches(decoded: Iterable[tuple[Sample, Decoded | None]], rows: _Rows, embedder: Embedder,
                      batch_size: int, stats: ShardStats, threads: int = 1, name: str = "embed-input") -> Iterator[Batch]:
    """Batch the shard's decoded samples and prepare the batches, in ``threads`` threads, in order."""
    raw = _raw_batches(decoded, rows, embedder.dims(), batch_size, stats)
    return in_order((Job(_prepared, embedder, b) for b in raw), threads, threads, name=f"{name}-prepare")


Embedded = tuple[str, list[int], np.ndarray]  # a space, its samples' rows, their vectors


def _on_accelerator(embedder: Embedder) -> bool:
    return getattr(embedder, "device", "cpu") != "cpu"


def _embedded(embedder: Embedder, batch: Batch) -> Embedded:
    space, at, prepared = batch
    return space, at, embedder.embed_prepared(prepared)[space]


def _embed_spaces(done: Iterable[Embedded], embedder: Embedder, rows: _Rows) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every batch's vectors in their rows; zero rows where a sample has no input in a space."""
    done = list(done)  # every batch is read before the shard's row count is known
    n, dims = len(rows.keys), embedder.dims()
    vectors = {s: np.zeros((n, d), np.float32) for s, d in dims.items()}
    ok = {s: np.zeros(n, bool) for s in dims}
    for space, at, out in done:
        vectors[space][at] = out
        ok[space][at] = True
    return vectors, ok


@dataclasses.dataclass(frozen=True)
class EmbedSink:
    """Consumes a shard's samples and writes its embeddings (the sink of an embed ``ShardTask``)."""

    config: EmbedConfig
    store: str
    source: str

    def __call__(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
                 shard_errors: list[str]) -> ShardStats:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            return self._embed(shard, samples, stages, shard_errors)
        finally:
            torch.set_num_threads(threads)

    def _embed(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
               shard_errors: list[str]) -> ShardStats:
        embedder = cached_embedder(self.config)
        digest = source_digest(Path(self.source), shard)
        rows = _Rows()
        stats = ShardStats(shard=shard, source=self.source)
        threads = self._input_threads(embedder)
        batches = _prepared_batches(self._decoded_samples(samples, embedder, threads, shard), rows, embedder,
                                    self.config.batch_size, stats, threads, name=f"embed-input-{shard}")
        vectors, ok = _embed_spaces(self._run_batches(batches, embedder, shard), embedder, rows)
        emb = ShardEmbeddings(keys=rows.keys, captions=rows.captions, vectors=vectors, ok=ok,
                              live=np.asarray(rows.live, bool), status=rows.status, reasons=rows.reasons,
                              source_status=rows.source_status, hash_status=rows.hash_status, digest=digest)
        write_shard(Path(self.store), shard, emb, self.config.dtype)
        stats.written = _written(emb)
        stats.stages = list(stages)
        stats.shard_errors = list(shard_errors)
        return stats

    def _run_batches(self, batches: Iterator[Batch], embedder: Embedder, shard: str) -> Iterator[Embedded]:
        """The model over each batch, in order: in streams while this thread reads and prepares the next
        batches, or one at a time, with the reading ahead in a thread or not."""
        streams = self._streams(embedder)
        if streams > 1:
            jobs = (Job(_embedded, embedder, b) for b in batches)
            return in_order(jobs, streams, 2 * streams, name=f"embed-model-{shard}")
        if self._reads_ahead(embedder):
            batches = prefetched(batches, name=f"embed-read-{shard}")
        return (_embedded(embedder, b) for b in batches)

    def _decoded_samples(self, samples: Iterable[Sample], embedder: Embedder, threads: int,
                         shard: str) -> Iterator[tuple[Sample, Decoded | None]]:
        """Each sample with its decoded inputs, in order: decoded in processes, or in ``threads`` threads."""
        processes = self._input_processes(embedder)
        if processes > 0:
            return decoded_in_processes(samples, embedder, processes)
        return in_order((Job(_decoded, embedder, s) for s in samples), threads, name=f"embed-input-{shard}-decode")

    def _input_processes(self, embedder: Embedder) -> int:
        """Processes that decode samples: where an accelerator waits on this process's input side."""
        if not embedder.decodes_in_processes or not can_start_processes():
            return 0
        if self.config.input_processes is not None:
            return self.config.input_processes
        return min(MAX_INPUT_PROCESSES, lent_cpus() - 1) if _on_accelerator(embedder) else 0

    def _streams(self, embedder: Embedder) -> int:
        """Batches the model runs at once: on the CPU, one per ``threads`` of the CPUs the runner lent."""
        if not embedder.concurrent_batches or _on_accelerator(embedder):
            return 1
        if self.config.streams is not None:
            return self.config.streams
        return max(1, lent_cpus() // self.config.threads)

    def _input_threads(self, embedder: Embedder) -> int:
        """Threads that decode and prepare inputs: an accelerator's model waits on them, a CPU's does not."""
        if not embedder.concurrent_inputs:
            return 1
        if self.config.input_threads is not None:
            return self.config.input_threads
        return lent_cpus() if _on_accelerator(embedder) else 1

    def _reads_ahead(self, embedder: Embedder) -> bool:
        if self.config.read_ahead is not None:
            return self.config.read_ahead
        return self.config.threads == 1 or _on_accelerator(embedder)

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(write=(self.store,))

    def is_done(self, shard: str) -> bool:
        path = shard_file(Path(self.store), shard)
        return path.exists() and read_shard_digest(Path(self.store), shard) == source_digest(Path(self.source), shard)

    def load_done(self, shard: str) -> ShardStats:
        emb = read_shard_embeddings(Path(self.store), shard)
        stats = ShardStats(shard=shard, source=self.source, samples=len(emb), written=_written(emb))
        stats.by_status = Counter(emb.status)
        stats.reasons = Counter(reason_category(r) for r in emb.reasons if r)
        return stats


def _written(emb: ShardEmbeddings) -> int:
    """Samples embedded in the first space (the payload's: images for open_clip)."""
    first = next(iter(emb.ok.values()), None)
    return int(first.sum()) if first is not None else 0


def _batching(config: EmbedConfig, embedder: Embedder) -> dict[str, int]:
    """The step settings a store keeps for an embedder whose floats follow them."""
    return {"batch_size": config.batch_size, "threads": config.threads} if embedder.batching_changes_floats else {}


def prepare_store(src: Path, out_root: Path, config: EmbedConfig) -> tuple[Path, StoreInfo]:
    """Set the embedder up once here (a refused checkpoint fails before any shard), then create the store."""
    embedder = cached_embedder(config)
    policy = read_policy_for(src)
    if not embedder.payload_extensions & policy.payload_extensions:
        raise ValueError(f"embedder {config.embedder_name()!r} reads {', '.join(sorted(embedder.payload_extensions))} "
                         f"payloads but {src} holds {', '.join(sorted(policy.payload_extensions))}; choose another "
                         "--embedder (`poisonlab components embedder`)")
    info = StoreInfo(model_id=embedder.store_id(), embedder=config.embedder_name(), spaces=embedder.dims(),
                     dtype=config.dtype, source=str(Path(src).resolve()), identity=embedder.identity(),
                     details=embedder.details(), dataset=dataset_ref(Path(src)),
                     settings={**_batching(config, embedder), **embedder.settings()})
    store = Path(out_root) / info.model_id
    write_info(store, info)
    return store, info


def plan_embed_tasks(src: Path, out_root: Path, config: EmbedConfig,
                     shards: list[str] | None = None) -> tuple[list[ShardTask], Path]:
    """One task per shard of ``src``; returns the tasks and the store folder ``out_root/<model_id>``."""
    src = Path(src)
    names = list(shards) if shards is not None else list_shards(src)
    if not names:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    store, _ = prepare_store(src, out_root, config)
    for shard in names:  # embeddings of another version of a shard: refuse before any work
        if shard_file(store, shard).exists() and read_shard_digest(store, shard) != source_digest(src, shard):
            raise EmbeddingMismatchError(
                f"{shard_file(store, shard)} was computed from another version of {src}/{shard}.tar; "
                "embed into a fresh folder"
            )
    sink = EmbedSink(config, str(store), str(src.resolve()))
    source = FolderSource(str(src), read_policy_for(src, max_pixels=config.max_pixels))
    tasks = [ShardTask(shard=n, source=source, stages=(), sink=sink, is_done=sink.is_done,
                       load_done=sink.load_done, source_name=str(src)) for n in names]
    return tasks, store
