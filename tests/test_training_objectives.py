"""Objectives are registered components: one defined here, outside poisonlab, trains through the same loop."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import Field
from safetensors.torch import load_file, save_file

from poisonlab.pipelines.registry import Params, RegistryError, get_registry
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.images import decode_image
from poisonlab.training import Built, LossOutput, TrainSettings, TrainState, local_update, train_run
from poisonlab.training.objectives import SkipSample, TrainingObjective, get_objective

VOCAB, WORDS, SIDE = 257, 8, 8


class ToyParams(Params):
    dim: int = Field(16, ge=2)
    temperature: float = Field(0.1, gt=0)


class ToyModel(torch.nn.Module):
    """A linear image encoder over 8x8 thumbnails and a bag of hashed words."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.image = torch.nn.Linear(3 * SIDE * SIDE, dim)
        self.text = torch.nn.EmbeddingBag(VOCAB, dim, mode="sum", padding_idx=0)


class ToyCodec:
    def decode(self, sample: Sample) -> tuple[np.ndarray, list[int]]:
        if sample.payload is None or not sample.text:
            raise SkipSample("toy_needs_image_and_text")
        thumb = decode_image(sample.payload).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
        words = [1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in sample.text.lower().split()][:WORDS]
        return np.asarray(thumb, np.float32).reshape(-1) / 255.0, words + [0] * (WORDS - len(words))

    def collate(self, items: Sequence[tuple[np.ndarray, list[int]]]) -> dict[str, torch.Tensor]:
        return {"images": torch.from_numpy(np.stack([i for i, _ in items])),
                "words": torch.tensor([w for _, w in items], dtype=torch.long)}


class ToyObjective:
    """Symmetric InfoNCE between the two linear encoders, at a fixed temperature."""

    step_logs = ("temperature",)

    def __init__(self, params: ToyParams) -> None:
        self.params = params

    def build(self, settings: TrainSettings) -> Built:
        return Built(ToyModel(self.params.dim), ToyCodec(), "toy")

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        images = F.normalize(model.image(batch["images"]), dim=-1)
        texts = F.normalize(model.text(batch["words"]), dim=-1)
        logits = images @ texts.T / self.params.temperature
        labels = torch.arange(len(logits))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return LossOutput(loss, {"temperature": torch.tensor(self.params.temperature)})

    def after_step(self, model: torch.nn.Module) -> None:
        pass

    def save(self, built: Built, run_dir: Path, extra: dict[str, Any]) -> None:
        save_file({k: v.contiguous() for k, v in built.model.state_dict().items()}, str(Path(run_dir) / "toy.safetensors"))

    def load(self, run_dir: Path) -> dict[str, torch.Tensor]:
        return load_file(str(Path(run_dir) / "toy.safetensors"))


get_registry("objective").register("toy-bow", ToyParams, summary="test: linear encoders, bag of words")(ToyObjective)

SETTINGS = TrainSettings(objective="toy-bow", objective_params={"dim": 8}, epochs=2, batch_size=32, lr=1e-2,
                         warmup_steps=1, shuffle_buffer=64, workers=1, device="cpu", log_every=1, threads=1)


def test_a_toy_objective_registered_outside_trains_through_the_loop(tiny_shards: Path, tmp_path: Path) -> None:
    assert isinstance(get_objective(SETTINGS), TrainingObjective)
    out = tmp_path / "toy"
    assert train_run(tiny_shards, out, SETTINGS, progress=False, stop_after_epoch=1) is None
    result = train_run(tiny_shards, out, SETTINGS, resume=True, progress=False)
    assert result is not None and result.steps == 14 and result.samples == 448  # 2 epochs of 7 batches
    assert result.skipped == {"partial_batch_dropped": 32}
    assert (out / "toy.safetensors").exists() and not (out / "model.safetensors").exists()
    steps = pd.read_csv(out / "metrics_steps.csv")
    assert list(steps.columns) == ["epoch", "step", "samples_seen", "loss", "lr", "temperature", "pairs_per_s"]
    assert (steps["temperature"] == 0.1).all() and steps["loss"].iloc[-3:].mean() < steps["loss"].iloc[:3].mean()
    # the resumed run folder holds the weights of an uninterrupted run of the same loop
    state, _ = local_update(None, tiny_shards, SETTINGS)
    saved = load_file(str(out / "toy.safetensors"))
    assert all(torch.equal(saved[name], state.weights[name]) for name in saved)


def test_toy_local_update_continues_exactly(tiny_shards: Path) -> None:
    settings = TrainSettings(**{**SETTINGS.model_dump(), "workers": 0})
    half, _ = local_update(None, tiny_shards, settings, steps=4)
    twice, _ = local_update(half, tiny_shards, settings, steps=5)
    once, _ = local_update(None, tiny_shards, settings, steps=9)
    assert isinstance(twice, TrainState) and twice.progress == once.progress
    assert all(torch.equal(twice.weights[k], once.weights[k]) for k in once.weights)


def test_unknown_objectives_and_parameters_fail_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unknown objective 'nope'"):
        train_run(tiny_shards, tmp_path / "a", TrainSettings(objective="nope", epochs=1), progress=False)
    with pytest.raises(RegistryError, match="unknown parameter"):
        train_run(tiny_shards, tmp_path / "b", TrainSettings(objective="clip", objective_params={"x": 1}, epochs=1),
                  progress=False)
