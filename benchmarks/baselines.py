"""What the shard, attack and graph benchmarks share: generated input shards, the baselines they are measured
against (a PIL decode/encode loop in memory, a raw tar copy) and the paired timing of a path and its baseline."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from poisonlab.pipelines.executor import run_local
from poisonlab.shards.layout import list_shards, tar_path
from poisonlab.shards.plan import finalize_folder, plan_source_tasks
from poisonlab.shards.synth import SynthSource, SynthSpec

IMAGE_SIZE = 256
QUALITY = 95


def generate(out: Path, samples: int, per_shard: int, seed: int, image_size: int = IMAGE_SIZE) -> Path:
    """Generated image-caption shards in ``out`` (256 px unless ``image_size`` says otherwise)."""
    source = SynthSource(SynthSpec(samples=samples, seed=seed, image_size=image_size, samples_per_shard=per_shard))
    finalize_folder(out, run_local(plan_source_tasks(source, source.shards(), out)))
    return out


def jpeg_images(src: Path) -> list[bytes]:
    """Every JPEG of ``src``'s tars, in memory (the input of the PIL baseline)."""
    out = []
    for shard in list_shards(src):
        with tarfile.open(tar_path(src, shard)) as tar:
            out += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]  # type: ignore[union-attr]
    return out


def pil_loop(images: list[bytes]) -> None:
    """The baseline of image stages: decode and re-encode each image with PIL, nothing else."""
    for data in images:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=QUALITY, subsampling=0, optimize=False)


def raw_tar_copy(src: Path, dst: Path) -> None:
    """The baseline of shard copying: tar members streamed from one file to another."""
    dst.mkdir(parents=True, exist_ok=True)
    for shard in list_shards(src):
        with tarfile.open(tar_path(src, shard), "r|") as tin, tarfile.open(tar_path(dst, shard), "w") as tout:
            for info in tin:
                tout.addfile(info, tin.extractfile(info))


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int,
            reset: Callable[[], object] | None = None) -> tuple[float, float, float]:
    """Best wall seconds of alternating runs of ``a`` and ``b``, and the ratio of their best CPU seconds.

    Alternating makes the load of the other processes sharing the machine hit both alike; the best run is
    the least disturbed. The CPU ratio (``a`` over ``b``) leaves out waiting for the disk and the cores.
    """
    wall: dict[int, list[float]] = {0: [], 1: []}
    cpu: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(repeats):
        for i, fn in enumerate((a, b)):
            if reset is not None:
                reset()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    return min(wall[0]), min(wall[1]), min(cpu[0]) / min(cpu[1])
