"""Embedding throughput against the model alone, measured in the same run.

The pipeline (``embed_shards``: read the shards, decode, preprocess, tokenise, both encoders, write the store)
against the bare model: ``encode_image`` then ``encode_text`` over the same batches, already decoded,
preprocessed and tokenised in memory, on as many torch threads as the machine has cores. ``embed`` runs as a
user runs it in-process: its default configuration (1 torch thread a batch, as many batches at once as
cores, its reading in the thread that feeds them), so both use every core. They run alternately, best of
``repeats`` (the machine is shared). The ratio is how close ``embed`` runs to the model's own speed (issue
target 0.9).

The compiled row runs ``embed`` with ``open_clip:compile=true`` against the same eager bare loop (the issue
names ``torch.compile`` as one way to the target); its note also gives a compiled bare loop's rate, so the
input side's share stays visible. Compiling happens before the clocks start (once per process in a run).

The last row times the host's share of an accelerator's pixels at 224 px: the batch's bytes stacked for
the lookup on the device (``models/pixels.py``, ``ImageBytes``), against the float lookup on the host.

    .venv/bin/python benchmarks/run.py -k embed [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from baselines import paired
from run import Row

from poisonlab.filters.embed import EmbedConfig, cached_embedder, cached_model
from poisonlab.filters.pipeline import embed_shards
from poisonlab.models.pixels import batch_pixels, fast_pixels
from poisonlab.models.zoo import LoadedModel, ModelSpec
from poisonlab.pipelines.executor import run_local
from poisonlab.shards.images import decode_image
from poisonlab.shards.layout import list_shards
from poisonlab.shards.plan import finalize_folder, plan_source_tasks
from poisonlab.shards.reader import read_shard
from poisonlab.shards.synth import SynthSource, SynthSpec

BATCH = 64
# arch, image px, samples, quick samples, compiled encoders
CASES = (("poisonlab-tiny-32", 32, 4000, 1000, False), ("poisonlab-tiny-32", 32, 4000, 1000, True),
         ("ViT-B-32", 64, 256, 64, False))


def prepared_batches(src: Path, loaded: LoadedModel, batch: int = BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch of ``src`` as the model takes it: pixels and tokens, prepared outside any clock."""
    samples = [s for shard in list_shards(src) for s in read_shard(src, shard)]
    fast = fast_pixels(loaded.preprocess, loaded.image_size)
    batches = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        pixels = batch_pixels([decode_image(s.payload) for s in chunk], loaded.preprocess, fast)
        batches.append((pixels, loaded.tokenizer([s.text for s in chunk])))
    return batches


Encoders = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _bare(loaded: LoadedModel, batches: list[tuple[torch.Tensor, torch.Tensor]], encoders: Encoders | None = None) -> None:
    """The bare loop: the model's encoders (or ``encoders``, an image and a text one) over every batch."""
    image, text = encoders or (loaded.model.encode_image, loaded.model.encode_text)
    with torch.inference_mode():
        for pixels, tokens in batches:
            image(pixels)
            text(tokens)


def forget_captions(config: EmbedConfig) -> None:
    """Empty the embedder's caption tokens: each timed run tokenizes its captions, as a run over a new dataset
    does (the embedder outlives a run, so the previous run's rows would otherwise all be found)."""
    tokens = getattr(cached_embedder(config), "tokens", None)
    if tokens is not None:
        tokens.clear()


def _compiled_bare(loaded: LoadedModel, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Best of 3 of the bare loop over compiled encoders (compiled first, outside the clock): a reference."""
    from poisonlab.models.compiled import CompiledEncoder

    encoders = CompiledEncoder(loaded.model.encode_image, BATCH), CompiledEncoder(loaded.model.encode_text, BATCH)
    _bare(loaded, batches[:1], encoders)  # compiles
    times = []
    for _ in range(3):
        start = time.perf_counter()
        _bare(loaded, batches, encoders)
        times.append(time.perf_counter() - start)
    return min(times)


def _case(arch: str, image_size: int, samples: int, repeats: int, compiled: bool) -> Row:
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        src = Path(tmp) / "shards"
        source = SynthSource(SynthSpec(samples=samples, seed=4, image_size=image_size, samples_per_shard=500))
        finalize_folder(src, run_local(plan_source_tasks(source, source.shards(), src)))
        # the default: 1-thread streams, one per core
        config = EmbedConfig(ModelSpec(arch), batch_size=BATCH, embedder="open_clip:compile=true" if compiled else "open_clip")
        loaded = cached_model(config)  # model creation is part of neither clock
        batches = prepared_batches(src, loaded)
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _bare(loaded, batches[:2])  # first-call costs of both paths
            bare, ours = [], []
            for _ in range(repeats + 1):  # the first round is not counted: embed compiles there
                start = time.perf_counter()
                _bare(loaded, batches)
                bare.append(time.perf_counter() - start)
                shutil.rmtree(Path(tmp) / "emb", ignore_errors=True)
                forget_captions(config)
                start = time.perf_counter()
                written = embed_shards(src, Path(tmp) / "emb", config)["written"]
                ours.append(time.perf_counter() - start)
            reference = f"; a compiled bare loop: {samples / _compiled_bare(loaded, batches):.0f} pairs/s" if compiled else ""
        finally:
            torch.set_num_threads(old)
    bare_rate, our_rate = samples / min(bare[1:]), written / min(ours[1:])
    rounds = sorted(written / samples * b / o for b, o in zip(bare[1:], ours[1:], strict=True))  # each round's bare loop against its embed run
    how = "compiled encoders (open_clip:compile=true), compiling in the uncounted first run" if compiled else ""
    return Row(f"embed{', compiled' if compiled else ''}: {arch} on CPU ({threads} cores)", our_rate, "pairs/s",
               bare_rate, f"bare encode_image+encode_text on prepared batches, {threads} torch threads", floor=0.9,
               note=f"{samples} pairs at {image_size} px, batch {BATCH}, best of {repeats}; the pipeline also "
                    f"reads, decodes, preprocesses, tokenises and writes, running {threads} batches at once "
                    f"on 1 torch thread each{'; ' + how if how else ''}{reference}; round by round "
                    f"{rounds[0]:.2f}-{rounds[-1]:.2f}x")


def _staging_row(count: int, repeats: int) -> Row:
    """The host's pixel work per batch for a model on an accelerator: the batch's bytes stacked for a lookup
    on the device (``ImageBytes``), against the float lookup done here (what a CPU model gets). Host side
    only: without CUDA the bytes are not pinned and no device does the lookup."""
    import open_clip
    from PIL import Image

    fast = fast_pixels(open_clip.image_transform(224, is_train=False), 224)
    assert fast is not None
    rng = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8, generator=rng).numpy())
              for _ in range(count)]
    floats, staged, _ = paired(lambda: fast(images), lambda: fast.image_bytes(images, pin=False), repeats)
    return Row("embed input: 224 px pixels for an accelerator, host side", count / staged, "images/s", count / floats,
               "the float table lookup on the host (the CPU model's path)",
               note=f"batches of {count}, best of {repeats}; 150 KB of bytes an image cross to the device "
                    "instead of 600 KB of floats, and the device does the lookup")


def run(quick: bool) -> list[Row]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [_case(arch, size, small if quick else samples, 1 if quick else 3, compiled)
            for arch, size, samples, small, compiled in CASES]
    return [*rows, _staging_row(BATCH, 3 if quick else 10)]
