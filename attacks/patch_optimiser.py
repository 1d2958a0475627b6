"""A patch optimised on a surrogate CLIP so that triggered images embed near the target's text (BadCLIP-style).

Liang et al. (BadCLIP, CVPR 2024) optimise the trigger on a surrogate model so that poisoned images already
look like the target class to CLIP: the backdoor then needs fewer poisoned pairs, and the triggered images
sit near clean target images instead of forming the tight outlier cluster a density detector finds. Here the
surrogate is any model poisonlab loads (a run folder, an open_clip ``local-dir:`` folder, or an architecture
with weights): the patch's pixels are optimised by Adam through a sigmoid (so they stay in range) to maximise
the cosine similarity between triggered images and the mean text embedding of prompts naming the target,
with an optional total-variation term that keeps the patch smooth (less visible).

Everything is deterministic: the initial patch and the image order come from keyed generators and torch
runs on one thread for the optimisation, so the same seed gives the same patch bytes, which the attack spec
then carries as an asset (evaluation applies exactly that patch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from poisonlab.pipelines.keyed import keyed_rng
from poisonlab.shards.images import ImageError, decode_array
from poisonlab.shards.layout import list_shards
from poisonlab.shards.reader import ReadPolicy, read_shard


@dataclasses.dataclass(frozen=True)
class PatchProblem:
    """What to optimise: a square patch of ``side`` pixels at (``y``, ``x``) of ``size``-pixel images."""

    side: int
    y: int
    x: int
    steps: int
    lr: float
    smoothness: float
    batch: int = 64


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread while optimising: the float order, and so the patch's bytes, do not depend on the
    machine's core count; the caller's setting is put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sample_images(folder: Path, count: int, size: int, seed: int, salt: str,
                  policy: ReadPolicy | None = None) -> np.ndarray:
    """Up to ``count`` decodable images of ``folder`` (shards in keyed order), resized to ``size`` pixels:
    the images the patch is optimised over. Samples the reader refuses are skipped."""
    shards = list_shards(folder)
    order = keyed_rng(seed, f"{salt}/patch-images", "shards").permutation(len(shards))
    images: list[np.ndarray] = []
    for index in order:
        for sample in read_shard(folder, shards[int(index)], policy):
            if sample.payload is None or sample.status not in ("ok", "changed"):
                continue
            try:
                array = decode_array(sample.payload)
            except ImageError:
                continue
            if array.shape[:2] != (size, size):
                array = np.asarray(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))
            images.append(array)
            if len(images) >= count:
                return np.stack(images)
    if not images:
        raise ValueError(f"no decodable image in {folder} to optimise the patch on")
    return np.stack(images)


def _normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s


def _total_variation(patch: torch.Tensor) -> torch.Tensor:
    return (patch[:, 1:, :] - patch[:, :-1, :]).abs().mean() + (patch[:, :, 1:] - patch[:, :, :-1]).abs().mean()


def target_direction(model: torch.nn.Module, tokenizer, target: str, prompts: Sequence[str]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The unit mean text embedding of the prompts naming the target."""
    with torch.no_grad():
        text = model.encode_text(tokenizer([p.format(target) for p in prompts]))
        text = torch.nn.functional.normalize(text.float(), dim=-1).mean(dim=0)
    return torch.nn.functional.normalize(text, dim=0)


def optimise_patch(model: torch.nn.Module, images: np.ndarray, direction: torch.Tensor, problem: PatchProblem,
                   mean: Sequence[float], std: Sequence[float], seed: int, salt: str) -> tuple[np.ndarray, list[float]]:
    """The patch (``side x side x 3`` uint8) and the loss per step (negative mean cosine to the target,
    plus the smoothness term). The model's weights are not changed."""
    rng = keyed_rng(seed, f"{salt}/patch-init", "patch")
    logits = torch.tensor(rng.normal(0.0, 1.0, (3, problem.side, problem.side)), dtype=torch.float32,
                          requires_grad=True)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mask = torch.zeros(1, 1, *pixels.shape[2:])
    mask[..., problem.y:problem.y + problem.side, problem.x:problem.x + problem.side] = 1.0
    optimiser = torch.optim.Adam([logits], lr=problem.lr)
    order = keyed_rng(seed, f"{salt}/patch-order", "batches")
    losses: list[float] = []
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with one_thread():
        for _ in range(problem.steps):
            batch = pixels[torch.from_numpy(order.choice(len(pixels), min(problem.batch, len(pixels)), replace=False))]
            patch = torch.sigmoid(logits)
            full = torch.zeros(3, *pixels.shape[2:])
            full[:, problem.y:problem.y + problem.side, problem.x:problem.x + problem.side] = patch
            triggered = batch * (1 - mask) + full.unsqueeze(0) * mask
            features = torch.nn.functional.normalize(model.encode_image(_normalise(triggered, mean, std)), dim=-1)
            loss = -(features @ direction).mean() + problem.smoothness * _total_variation(patch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    final = torch.sigmoid(logits.detach()).permute(1, 2, 0).numpy()
    return np.clip(np.rint(final * 255.0), 0, 255).astype(np.uint8), losses


def png_bytes(patch: np.ndarray) -> bytes:
    """The patch as PNG (lossless: evaluation must paste exactly these pixels)."""
    sink = io.BytesIO()
    Image.fromarray(patch).save(sink, format="PNG", optimize=False)
    return sink.getvalue()


def make_patch(surrogate: Path, source: Path, target: str, prompts: Sequence[str], images: int,
               problem_of_size: Callable[[int], PatchProblem], seed: int, salt: str) -> tuple[np.ndarray, list[float]]:
    """Load the surrogate, sample ``images`` images of ``source`` at its input size and optimise the patch
    (``problem_of_size`` places the patch on images of that size, as the trigger will)."""
    import open_clip

    from poisonlab.models.zoo import ModelSpec, load_model
    from poisonlab.shards.dataset import read_policy_for

    loaded = load_model(ModelSpec.from_run(surrogate))
    cfg = open_clip.get_model_preprocess_cfg(loaded.model)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    pixels = sample_images(source, images, loaded.image_size, seed, salt, read_policy_for(source))
    direction = target_direction(loaded.model, loaded.tokenizer, target, prompts)
    return optimise_patch(loaded.model, pixels, direction, problem_of_size(loaded.image_size), mean, std, seed, salt)
