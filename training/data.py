"""Streaming image-caption pairs from WebDataset shards into training batches.

The dataset is never loaded into memory: shards stream through a ``webdataset.DataPipeline``
(shard list -> tar members -> samples -> keyed shuffle buffer -> safe decode -> batches), by default in a
DataLoader worker process so that reading and decoding overlap the training step. Only members with an
image (jpg/png) or caption extension are ever read out of the tar; images are decoded by
``poisonlab.shards.images`` with its pixel cap and nothing is ever unpickled. A sample that cannot be
used (a corrupt image, a missing caption, a key the sidecar marks as dropped or errored, a shard that
ends mid-sample) is skipped and counted by reason, so a bad shard costs samples, never the run.

Order is a pure function of (seed, epoch): shards are ranked by keyed hashes and the shuffle buffer's
generator is seeded from the same keys (and the worker's index), so a rerun with the same number of
workers sees the same batches in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image

from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.pipelines.sample import LIVE_STATUSES
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from poisonlab.shards.layout import list_shards, sidecar_path, tar_path

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
READ_EXTENSIONS = frozenset(IMAGE_EXTENSIONS) | {"txt"}  # metadata (.json) is not needed to train
SHUFFLE_STAGE = "train/shuffle"


class DataError(ValueError):
    """Training input that cannot be used at all (no shards, no samples): raised before training starts."""


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The tars of one shard folder and how many live samples they hold."""

    directory: Path
    shards: tuple[str, ...]
    samples: int

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
        side = sidecar_path(directory, shard)
        if side.exists():
            status = pq.read_table(side, columns=["status"]).column("status").to_pylist()
            total += sum(1 for s in status if s in LIVE_STATUSES)
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


def _nonlive_keys(url: str) -> frozenset[str]:
    """Keys the shard's sidecar marks as dropped or errored: they are skipped even if the tar has them."""
    path = Path(url)
    side = sidecar_path(path.parent, path.name[: -len(".tar")])
    if not side.exists():
        return frozenset()
    table = pq.read_table(side, columns=["key", "status"])
    return frozenset(k for k, s in zip(table.column("key").to_pylist(), table.column("status").to_pylist(), strict=True)
                     if s not in LIVE_STATUSES)


class SkipCounter:
    """Samples and shard tails skipped, by reason. Lives in the process that decodes."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def add(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def take(self) -> dict[str, int]:
        """Counts since the last call (so each batch reports only its own skips)."""
        out = dict(self.counts)
        self.counts.clear()
        return out

    def handler(self, exc: Exception) -> bool:
        """webdataset's ``handler=`` hook: a broken tar or a duplicate member ends that shard, counted."""
        self.add(f"shard_error: {type(exc).__name__}")
        return True


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    """How images become model input: open_clip's eval transform (shortest side, centre crop, normalise)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def for_model(cls, model: torch.nn.Module, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFormat:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        return cls(size=size, mean=mean, std=std, max_pixels=max_pixels)  # type: ignore[arg-type]

    def fit(self, image: Image.Image) -> np.ndarray:
        """torchvision's ``Resize(size)`` (shortest side, bicubic) then ``CenterCrop``, as open_clip evaluates."""
        w, h = image.size
        if (w, h) != (self.size, self.size):
            short, long = min(w, h), max(w, h)
            if short != self.size:
                new_long = int(self.size * long / short)
                nw, nh = (self.size, new_long) if w <= h else (new_long, self.size)
                image = image.resize((nw, nh), Image.Resampling.BICUBIC)
                w, h = nw, nh
            left, top = int(round((w - self.size) / 2.0)), int(round((h - self.size) / 2.0))
            image = image.crop((left, top, left + self.size, top + self.size))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)

    def fit_array(self, array: np.ndarray) -> np.ndarray:
        if array.shape[:2] == (self.size, self.size):
            return array
        return self.fit(Image.fromarray(array))

    def decode(self, data: bytes) -> np.ndarray:
        return self.fit(decode_image(data, self.max_pixels))

    def to_tensor(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 HxWx3 arrays into a normalised float NCHW batch in one vectorised step."""
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return batch.sub_(mean).div_(std)


class TokenCache:
    """Tokenize captions once: web captions repeat, and open_clip's BPE tokenizer runs in Python."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], max_entries: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self.max_entries:
                self._cache.clear()
            for text, row in zip(missing, self.tokenizer(missing), strict=True):
                self._cache[text] = row
        return torch.stack([self._cache[t] for t in texts])


@dataclasses.dataclass
class Batch:
    """Model-ready tensors plus what was skipped while assembling them."""

    images: torch.Tensor
    texts: torch.Tensor
    keys: list[str]
    skipped: dict[str, int]

    def __len__(self) -> int:
        return len(self.keys)


def epoch_shard_order(shards: Sequence[str], seed: int, epoch: int) -> list[str]:
    """Shards ranked by a keyed hash of (seed, epoch, shard): a fresh but reproducible order per epoch."""
    return sorted(shards, key=lambda s: keyed_u64(seed, "train/shards", f"{epoch}/{Path(s).name}"))


def _drop_nonlive(samples: Iterable[dict[str, Any]], skips: SkipCounter) -> Iterator[dict[str, Any]]:
    current_url, nonlive = None, frozenset()
    for sample in samples:
        url = sample.get("__url__")
        if url != current_url:
            current_url, nonlive = url, _nonlive_keys(url) if url else frozenset()
        if sample["__key__"] in nonlive:
            skips.add("sidecar_status: not live")
            continue
        yield sample


def _decode(samples: Iterable[dict[str, Any]], fmt: ImageFormat, skips: SkipCounter) -> Iterator[tuple[str, np.ndarray, str]]:
    for sample in samples:
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            skips.add("missing_image")
            continue
        raw_text = sample.get("txt")
        if raw_text is None:
            skips.add("missing_caption")
            continue
        try:
            text = raw_text.decode("utf-8")
        except UnicodeDecodeError:
            skips.add("caption_not_utf8")
            continue
        try:
            image = fmt.decode(sample[ext])
        except ImageError as exc:
            skips.add(str(exc).split(":")[0])
            continue
        yield sample["__key__"], image, text


def _batches(
    items: Iterable[tuple[str, np.ndarray, str]], batch_size: int, fmt: ImageFormat, tokens: TokenCache,
    skips: SkipCounter, partial: bool,
) -> Iterator[Batch]:
    keys: list[str] = []
    images: list[np.ndarray] = []
    texts: list[str] = []
    for key, image, text in items:
        keys.append(key)
        images.append(image)
        texts.append(text)
        if len(keys) == batch_size:
            yield Batch(fmt.to_tensor(images), tokens(texts), keys, skips.take())
            keys, images, texts = [], [], []
    if keys and partial:
        yield Batch(fmt.to_tensor(images), tokens(texts), keys, skips.take())
    else:
        leftover = skips.take()
        if keys:
            leftover["partial_batch_dropped"] = len(keys)
        if leftover:  # trailing skips still reach the caller's counts
            yield Batch(torch.empty(0), torch.empty(0, dtype=torch.long), [], leftover)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """One epoch's stream: which shards, in which order, shuffled how, batched how."""

    shard_set: ShardSet
    batch_size: int
    seed: int = 0
    shuffle_buffer: int = 2000
    workers: int = 0
    partial: bool = False


def epoch_pipeline(spec: StreamSpec, epoch: int, fmt: ImageFormat, tokens: TokenCache) -> wds.DataPipeline:
    """The WebDataset pipeline of one epoch (each DataLoader worker reads its own shards).

    Every stage is a picklable callable, so the pipeline also runs in worker processes that are spawned.
    """
    skips = SkipCounter()
    urls = epoch_shard_order(spec.shard_set.urls, spec.seed, epoch)
    stages: list[Any] = [wds.SimpleShardList(urls)]
    if spec.workers > 0:
        stages.append(wds.split_by_worker)
    stages += [
        wds.tarfile_to_samples(handler=skips.handler, select_files=_wanted_member),
        functools.partial(_drop_nonlive, skips=skips),
    ]
    if spec.shuffle_buffer > 1:
        stages.append(_KeyedShuffle(spec.seed, epoch, spec.shuffle_buffer))
    stages += [
        functools.partial(_decode, fmt=fmt, skips=skips),
        functools.partial(_batches, batch_size=spec.batch_size, fmt=fmt, tokens=tokens, skips=skips,
                          partial=spec.partial),
    ]
    return wds.DataPipeline(*stages)


def _wanted_member(name: str) -> bool:
    """Only image and caption members are read out of the tar; anything else is never touched."""
    base = name.rsplit("/", 1)[-1]
    return base.partition(".")[2].lower() in READ_EXTENSIONS


class _KeyedShuffle:
    """webdataset's shuffle buffer with a generator seeded from (seed, epoch, worker), not the clock."""

    def __init__(self, seed: int, epoch: int, bufsize: int) -> None:
        self.seed, self.epoch, self.bufsize = seed, epoch, bufsize

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(keyed_u64(self.seed, SHUFFLE_STAGE, f"{self.epoch}/{worker}"))
        initial = min(self.bufsize, max(1, self.bufsize // 2))
        return wds.shuffle(self.bufsize, initial, rng=rng)(src)


def iterate_epoch(spec: StreamSpec, epoch: int, fmt: ImageFormat, tokens: TokenCache) -> Iterator[Batch]:
    """Batches of one epoch, in a deterministic order for a given (seed, epoch, workers)."""
    pipeline = epoch_pipeline(spec, epoch, fmt, tokens)
    if spec.workers <= 0:
        yield from pipeline
        return
    workers = min(spec.workers, len(spec.shard_set.shards))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers, collate_fn=_identity)
    yield from loader


def _identity(batch: Batch) -> Batch:
    return batch
