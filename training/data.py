"""Streaming samples from shards into training batches, through the one shard reader.

The dataset is never loaded into memory. Each epoch, shards are ranked by keyed hashes, split between
DataLoader worker processes (so reading and decoding overlap the training step), read by
``poisonlab.shards.reader.read_shard`` with the folder's read policy (``read_policy_for``: its modality's
payload extensions, the pixel cap, refusal of pickles and other members), passed through a keyed shuffle
buffer, decoded by the objective's codec and collated into batches. A sample that cannot be used (a
quarantined member, a corrupt image, a missing caption, a key the sidecar marks as dropped or errored, a
shard that ends mid-sample) is skipped and counted by reason, so a bad shard costs samples, never the run.
Rows the sidecar already records as not live (failed downloads, pairs removed by cleaning) are not part
of the training set: they are neither trained on nor counted again.

Order is a pure function of (seed, epoch, workers): a rerun with the same number of workers sees the same
batches in the same order, and ``start`` resumes an epoch at any batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from poisonlab.pipelines.accounting import reason_category
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.sample import LIVE_STATUSES, Sample
from poisonlab.shards.dataset import DatasetRecordError, read_policy_for
from poisonlab.shards.images import DEFAULT_MAX_PIXELS
from poisonlab.shards.layout import list_shards, sidecar_path, tar_path
from poisonlab.shards.reader import STAGE as READ_STAGE
from poisonlab.shards.reader import ReadPolicy, ReadReport, read_shard
from poisonlab.training.decoded_cache import Decoded, DecodedShards, decode
from poisonlab.training.image_codec import ImageFormat  # noqa: F401  (re-exported: older imports)
from poisonlab.training.objectives import BatchCodec
from poisonlab.training.shuffle import buffer_shuffle, shuffle_rng

SOURCE_LIVE = LIVE_STATUSES | {"success"}  # img2dataset's live rows are "success"


class DataError(ValueError):
    """Training input that cannot be used at all (no shards, no samples): raised before training starts."""


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The tars of one shard folder and how many live samples they hold."""

    directory: Path
    shards: tuple[str, ...]
    samples: int
    # shard -> the only keys to train on (a federated client's partition of shared shards); None: every live
    # sample. Other keys are passed over unread by the codec and uncounted: they are not this set's data.
    keys: Mapping[str, frozenset[str]] | None = None

    @property
    def urls(self) -> list[str]:
        return [str(tar_path(self.directory, s)) for s in self.shards]


def open_shard_set(directory: Path) -> ShardSet:
    """Find the tars and count live samples from ``sizes.json`` or the sidecars, without opening a tar."""
    directory = Path(directory)
    try:
        shards = tuple(list_shards(directory))
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    if not shards:
        raise DataError(f"no shards (NNNNN.tar) in {directory}")
    return ShardSet(directory, shards, _count_live(directory, shards))


def _count_live(directory: Path, shards: Sequence[str]) -> int:
    sizes_file = directory / "sizes.json"
    if sizes_file.exists():
        sizes = json.loads(sizes_file.read_text())
        if all(f"{s}.tar" in sizes for s in shards):
            return sum(int(sizes[f"{s}.tar"]) for s in shards)
    total = 0
    for shard in shards:
        if sidecar_path(directory, shard).exists():
            total += sum(_sidecar_live(directory, shard).values())
        else:  # a foreign shard without a sidecar: count its captions from the tar headers
            import tarfile

            try:
                with tarfile.open(tar_path(directory, shard), mode="r|*") as tar:
                    for member in tar:
                        total += member.isfile() and member.name.endswith(".txt")
            except (tarfile.TarError, OSError, EOFError):
                pass  # a damaged tar: its readable part still counts; the stream skips the rest
    if total == 0:
        raise DataError(f"no live samples in {directory}")
    return total


def _sidecar_live(directory: Path, shard: str) -> dict[str, bool]:
    """Key -> whether the shard's sidecar says it is live (empty without a readable sidecar)."""
    side = sidecar_path(directory, shard)
    if not side.exists():
        return {}
    try:
        table = pq.read_table(side, columns=["key", "status"])
    except Exception:  # the reader reports an unreadable sidecar as a shard error
        return {}
    return {str(k): s in SOURCE_LIVE
            for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True)}


def read_policy(directory: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadPolicy:
    """The folder's read policy (its modality's, from ``dataset.json``) with the run's pixel cap."""
    try:
        return read_policy_for(Path(directory), max_pixels=max_pixels)
    except DatasetRecordError as exc:
        raise DataError(str(exc)) from None


class SkipCounter:
    """Samples and shard problems skipped, by reason. Lives in the process that reads and decodes."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def take(self) -> dict[str, int]:
        """Counts since the last call (so each batch reports only its own skips)."""
        out = dict(self.counts)
        self.counts.clear()
        return out


def skip_reason(reason: str | None) -> str:
    """'read: missing_caption: no .txt member; ...' -> 'missing_caption' (the reader's kind of problem)."""
    category = reason_category(reason or "error")
    prefix = f"{READ_STAGE}: "
    return category[len(prefix):] if category.startswith(prefix) else category


@dataclasses.dataclass
class Batch:
    """Collated model input (the objective's named tensors) plus what was skipped while assembling it."""

    inputs: dict[str, torch.Tensor]
    keys: list[str]
    skipped: dict[str, int]

    def __len__(self) -> int:
        return len(self.keys)


def epoch_shard_order(shards: Sequence[str], seed: int, epoch: int) -> list[str]:
    """Shards ranked by a keyed hash of (seed, epoch, shard): a fresh but reproducible order per epoch."""
    return sorted(shards, key=lambda s: keyed_u64(seed, "train/shards", f"{epoch}/{Path(s).name}"))


def _shard_events(directory: Path, shard: str, policy: ReadPolicy,
                  keys: Mapping[str, frozenset[str]] | None) -> Iterator[Sample | str]:
    """The trainable samples of one shard in reader order (only ``keys[shard]`` when given), and the reason
    for everything else of this set that was passed over."""
    upstream = _sidecar_live(directory, shard)
    wanted = None if keys is None else keys.get(shard, frozenset())
    report = ReadReport()
    for sample in read_shard(directory, shard, policy, report, keys=wanted):
        live_upstream = upstream.get(sample.key, True)
        if sample.is_live and live_upstream:
            yield sample
        elif sample.is_live:
            yield "sidecar_status: not live"
        elif live_upstream:
            yield skip_reason(sample.reason)
    for problem in report.shard_errors:
        yield f"shard_error: {problem.split(':')[0]}"


def _live_samples(directory: Path, shards: Iterable[str], policy: ReadPolicy, skips: SkipCounter,
                  keys: Mapping[str, frozenset[str]] | None = None,
                  cache: DecodedShards | None = None) -> Iterator[Sample | Decoded]:
    """The trainable samples of ``shards``, everything else counted by reason as it is passed. Through a
    cache they come already decoded, and from memory once an earlier epoch kept their shard."""
    for shard in shards:
        events: Iterable[Sample | Decoded | str] = _shard_events(directory, shard, policy, keys)  # lazy: unread yet
        if cache is not None:
            events = cache.through(shard, events)
        for event in events:
            if isinstance(event, str):
                skips.add(event)
            else:
                yield event


def _decoded(samples: Iterable[Sample | Decoded], codec: BatchCodec, skips: SkipCounter) -> Iterator[tuple[str, Any]]:
    for sample in samples:
        outcome = sample if isinstance(sample, Decoded) else decode(sample, codec)
        if outcome.skip is None:
            yield outcome.key, outcome.item
        else:
            skips.add(outcome.skip)


def _batches(items: Iterable[tuple[str, Any]], batch_size: int, codec: BatchCodec, skips: SkipCounter,
             partial: bool) -> Iterator[Batch]:
    keys: list[str] = []
    decoded: list[Any] = []
    for key, item in items:
        keys.append(key)
        decoded.append(item)
        if len(keys) == batch_size:
            yield Batch(codec.collate(decoded), keys, skips.take())
            keys, decoded = [], []
    if keys and partial:
        yield Batch(codec.collate(decoded), keys, skips.take())
        return
    leftover = skips.take()
    if keys:
        leftover["partial_batch_dropped"] = len(keys)
    if leftover:  # trailing skips still reach the caller's counts
        yield Batch({}, [], leftover)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One epoch's stream: which shards, in which order, shuffled how, batched how, read with which policy."""

    shard_set: ShardSet
    batch_size: int
    seed: int = 0
    shuffle_buffer: int = 2000
    workers: int = 0
    partial: bool = False
    policy: ReadPolicy | None = None  # None: the folder's policy (``read_policy``)


class EpochStream(torch.utils.data.IterableDataset):
    """The batches of one epoch as each DataLoader worker makes them from its own shards."""

    def __init__(self, spec: StreamSpec, epoch: int, codec: BatchCodec, policy: ReadPolicy,
                 cache: DecodedShards | None = None) -> None:
        super().__init__()
        self.spec, self.epoch, self.codec, self.policy, self.cache = spec, epoch, codec, policy, cache

    def __iter__(self) -> Iterator[Batch]:
        spec = self.spec
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ranked = epoch_shard_order([f"{s}.tar" for s in spec.shard_set.shards], spec.seed, self.epoch)
        mine = [name[: -len(".tar")] for name in ranked[worker::workers]]
        skips = SkipCounter()
        samples: Iterable[Sample | Decoded] = _live_samples(spec.shard_set.directory, mine, self.policy, skips,
                                                            spec.shard_set.keys, self.cache)
        if spec.shuffle_buffer > 1:
            samples = buffer_shuffle(samples, spec.shuffle_buffer, shuffle_rng(spec.seed, self.epoch, worker))
        yield from _batches(_decoded(samples, self.codec, skips), spec.batch_size, self.codec, skips, spec.partial)


def iterate_epoch(spec: StreamSpec, epoch: int, codec: BatchCodec, start: int = 0,
                  cache: DecodedShards | None = None) -> Iterator[Batch]:
    """Batches of one epoch, in a deterministic order for a given (seed, epoch, workers), from ``start``.
    ``cache`` (read in this process only; it holds what ``codec`` decoded) replays the shards an earlier
    epoch kept: the same batches."""
    policy = spec.policy or read_policy(spec.shard_set.directory)
    if spec.workers <= 0:
        yield from itertools.islice(EpochStream(spec, epoch, codec, policy, cache), start, None)
        return
    stream = EpochStream(spec, epoch, codec, policy)
    workers = min(spec.workers, len(spec.shard_set.shards))
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=_identity)
    yield from itertools.islice(loader, start, None)


def _identity(batch: Batch) -> Batch:
    return batch
