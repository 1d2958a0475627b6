"""The embedding step: one task per shard encodes every image and caption with an open_clip model.

The model is loaded once per worker process (a per-process cache keyed by the model spec and device),
batched, on CUDA when torch sees a GPU (half precision there) and on the CPU otherwise. Images are decoded
with the shared pixel cap; a sample whose image does not decode, or that was not live in the shard, gets
no image embedding and a recorded reason, never a silent drop. A shard's embeddings are written under a
temporary name and renamed into place, with the digest of the tar they came from: a rerun skips them,
and a changed shard is an error rather than a silent mix of versions.

Float results of a CPU forward pass depend (in the last bits) on torch's thread count and on how samples
are batched, so both are part of the configuration, not of the machine: ``threads`` defaults to 1 (the
parallelism is one worker per core) and batches never cross shards, so the same config writes the same
bytes with any number of workers.

With random weights (``weights=None``), the model is initialised from ``seed`` inside a forked torch RNG,
so every worker builds the same model and the global generator is left as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from poisonlab.filters.store import (
    EmbeddingMismatchError,
    ShardEmbeddings,
    StoreInfo,
    file_digest,
    read_shard_digest,
    read_shard_embeddings,
    shard_file,
    source_digest,
    write_info,
    write_shard,
)
from poisonlab.models.zoo import CHECKPOINT_NAME, LoadedModel, ModelSpec, load_model
from poisonlab.pipelines.accounting import ShardStats, StageCounts, reason_category
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image
from poisonlab.shards.layout import list_shards
from poisonlab.shards.plan import FolderSource

STAGE = "embed"
HASH_TYPES = ("md5", "sha256", "sha512")


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """Which model, and how to run it."""

    model: ModelSpec
    batch_size: int = 256
    dtype: Literal["float32", "float16"] = "float32"  # storage; computation is float32 on CPUs
    device: str | None = None  # None: cuda when available, else cpu
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 autocast on CUDA, fp32 on CPU
    threads: int = 1  # torch CPU threads per worker: float results depend on it, so it is fixed (see below)
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0  # initialisation of random weights

    def resolved_device(self) -> str:
        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")


def weights_identity(spec: ModelSpec, seed: int) -> str:
    """What the weights are: a file's sha256, an open_clip tag, or random from a seed."""
    if spec.weights is None:
        return f"random:{seed}"
    path = Path(spec.weights)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if path.exists():
        return "sha256:" + file_digest(path)
    return f"tag:{spec.weights}"


def model_id(spec: ModelSpec, seed: int) -> str:
    """A folder name that changes whenever the architecture or the weights change."""
    arch = Path(spec.arch)
    arch_identity = arch.read_text() if arch.suffix == ".json" and arch.exists() else spec.arch
    digest = hashlib.sha256(json.dumps([arch_identity, weights_identity(spec, seed)]).encode()).hexdigest()[:12]
    label = json.loads(arch_identity).get("arch", arch.stem) if arch.suffix == ".json" and arch.exists() else spec.arch
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', str(label))[:48]}-{digest}"


_MODELS: dict[tuple, LoadedModel] = {}


def cached_model(config: EmbedConfig) -> LoadedModel:
    """The model of this spec on this device, loaded once per process."""
    device = config.resolved_device()
    key = (config.model, device, config.seed)
    if key not in _MODELS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            _MODELS[key] = load_model(config.model, device)
    return _MODELS[key]


def _hash_status(meta: dict[str, Any]) -> str:
    for h in HASH_TYPES:
        expected, got = meta.get(f"expected_{h}"), meta.get(f"download_{h}")
        if expected and got:
            return "match" if str(expected).lower() == str(got).lower() else "mismatch"
    return ""


class _Encoder:
    """Batches of decoded images and captions through one model."""

    def __init__(self, config: EmbedConfig) -> None:
        self.config = config
        self.loaded = cached_model(config)
        self.device = config.resolved_device()
        precision = config.precision
        if precision == "auto":
            precision = "fp16" if self.device.startswith("cuda") else "fp32"
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def _run(self, fn, batch: torch.Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
        batch = batch.to(self.device)
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast):
                    out = fn(batch)
            else:
                out = fn(batch)
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy()

    def images(self, images: list) -> np.ndarray:
        return self._run(self.loaded.model.encode_image, torch.stack([self.loaded.preprocess(im) for im in images]))

    def texts(self, texts: list[str]) -> np.ndarray:
        return self._run(self.loaded.model.encode_text, self.loaded.tokenizer(texts))


@dataclasses.dataclass(frozen=True)
class EmbedSink:
    """Consumes a shard's samples and writes its embeddings (the sink of an embed ``ShardTask``)."""

    config: EmbedConfig
    store: str
    source: str

    def __call__(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
                 shard_errors: list[str]) -> ShardStats:
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            return self._embed(shard, samples, stages, shard_errors)
        finally:
            torch.set_num_threads(threads)

    def _embed(self, shard: str, samples: Iterable[Sample], stages: list[StageCounts],
               shard_errors: list[str]) -> ShardStats:
        encoder = _Encoder(self.config)
        dim = encoder.loaded.embed_dim
        digest = source_digest(Path(self.source), shard)
        keys, captions, live, status, reasons, source_status, hash_status = [], [], [], [], [], [], []
        image_rows: list[int] = []
        images: list = []
        text_rows: list[int] = []
        texts: list[str] = []
        stats = ShardStats(shard=shard, source=self.source)
        for sample in samples:
            row = len(keys)
            keys.append(sample.key)
            captions.append(sample.text or "")
            live.append(sample.is_live)
            status.append(sample.status)
            source_status.append(str(sample.meta.get("source_status") or ""))
            hash_status.append(_hash_status(dict(sample.meta)))
            stats.samples += 1
            stats.by_status[sample.status] += 1
            why: list[str] = []
            if not sample.is_live:
                why.append(f"not_live: {sample.reason or sample.status}")
            else:
                if sample.payload is None or sample.payload_ext not in IMAGE_EXTENSIONS:
                    why.append(f"{STAGE}: no_image: payload .{sample.payload_ext} is not an image")
                else:
                    try:
                        images.append(decode_image(sample.payload, self.config.max_pixels))
                        image_rows.append(row)
                    except ImageError as exc:
                        why.append(f"{STAGE}: {exc}")
                if sample.text and sample.text.strip():
                    texts.append(sample.text)
                    text_rows.append(row)
                else:
                    why.append(f"{STAGE}: no_caption")
            reasons.append("; ".join(why))
            if why:
                stats.reasons[reason_category(why[0])] += 1
        n = len(keys)
        image = np.zeros((n, dim), np.float32)
        text = np.zeros((n, dim), np.float32)
        bs = self.config.batch_size
        for start in range(0, len(images), bs):
            image[image_rows[start:start + bs]] = encoder.images(images[start:start + bs])
        for start in range(0, len(texts), bs):
            text[text_rows[start:start + bs]] = encoder.texts(texts[start:start + bs])
        image_ok = np.zeros(n, bool)
        image_ok[image_rows] = True
        text_ok = np.zeros(n, bool)
        text_ok[text_rows] = True
        emb = ShardEmbeddings(keys=keys, captions=captions, image=image, text=text, image_ok=image_ok,
                              text_ok=text_ok, live=np.asarray(live, bool), status=status, reasons=reasons,
                              source_status=source_status, hash_status=hash_status, digest=digest)
        write_shard(Path(self.store), shard, emb, self.config.dtype)
        stats.written = int(image_ok.sum())
        stats.stages = list(stages)
        stats.shard_errors = list(shard_errors)
        return stats

    def is_done(self, shard: str) -> bool:
        path = shard_file(Path(self.store), shard)
        return path.exists() and read_shard_digest(Path(self.store), shard) == source_digest(Path(self.source), shard)

    def load_done(self, shard: str) -> ShardStats:
        emb = read_shard_embeddings(Path(self.store), shard)
        stats = ShardStats(shard=shard, source=self.source, samples=len(emb), written=int(emb.image_ok.sum()))
        stats.by_status = Counter(emb.status)
        stats.reasons = Counter(reason_category(r) for r in emb.reasons if r)
        return stats


def prepare_store(src: Path, out_root: Path, config: EmbedConfig) -> tuple[Path, StoreInfo]:
    """Load the model once here (a refused checkpoint fails before any shard), then create the store."""
    loaded = cached_model(config)
    mid = model_id(config.model, config.seed)
    info = StoreInfo(
        model_id=mid, arch=config.model.arch, weights=config.model.weights,
        weights_digest=weights_identity(config.model, config.seed), embed_dim=loaded.embed_dim,
        image_size=loaded.image_size, context_length=loaded.context_length, dtype=config.dtype,
        source=str(Path(src).resolve()),
    )
    store = Path(out_root) / mid
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
    source = FolderSource(str(src), read_policy_for(src))  # the folder's modality, not the image default
    tasks = [ShardTask(shard=n, source=source, stages=(), sink=sink, is_done=sink.is_done,
                       load_done=sink.load_done, source_name=str(src)) for n in names]
    return tasks, store
