"""What the shard and attack benchmarks share: generated input shards and the baselines they are measured against
(a PIL decode/encode loop in memory, a raw tar copy)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from poisonlab.pipelines.executor import run_local
from poisonlab.shards.layout import list_shards, tar_path
from poisonlab.shards.plan import finalize_folder, plan_source_tasks
from poisonlab.shards.synth import SynthSource, SynthSpec

IMAGE_SIZE = 256
QUALITY = 95


def generate(out: Path, samples: int, per_shard: int, seed: int) -> Path:
    """Generated 256 px image-caption shards in ``out``."""
    source = SynthSource(SynthSpec(samples=samples, seed=seed, image_size=IMAGE_SIZE, samples_per_shard=per_shard))
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
