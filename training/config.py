"""Training hyperparameters: one typed, frozen record shared by the CLI, recipes and the trainer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from poisonlab.pipelines.registry import Params
from poisonlab.shards.images import DEFAULT_MAX_PIXELS

# Settings that change how fast, not what, a run computes: a resumed run may differ in these.
RUNTIME_ONLY = frozenset({"device", "log_every", "threads", "cache_bytes"})


class TrainSettings(Params):
    """What a contrastive pretraining run does (the data and output folder are given separately)."""

    objective: str = Field("clip", description="registered training objective (`poisonlab components objective`)")
    objective_params: dict[str, Any] = Field(default_factory=dict, description="the objective's parameters")
    model: str = Field("poisonlab-tiny-32", description="the model the objective builds (CLIP: open_clip "
                       "architecture name or JSON config file)")
    epochs: int = Field(5, ge=1)
    # batch 64 at lr 1e-3: batch 128 reached zero-shot 0.71 in 6 epochs, batch 32 or lr 2e-3 learned colour only;
    # on the built-in 20,000 badnets pairs 10 epochs of cosine reach 0.97 (README, training and experiments)
    batch_size: int = Field(64, ge=2, description="pairs per step (the contrastive loss needs >= 2)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps (default: 5% of all steps)")
    # 0.3: the rate holds at lr until the last 30% of the steps. In 6 epochs on the built-in 20,000 badnets pairs
    # zero-shot 0.946 against 0.770 with a cosine over the whole run (1.0), on the blended pairs 0.942 against
    # 0.706: the loss falls fastest in epochs 4-6, where a 6-epoch cosine has already halved lr
    decay_fraction: float = Field(0.3, gt=0, le=1, description="share of the steps after the warm-up over which "
                                  "the rate decays (cosine) to zero; before it the rate holds at lr")
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value")
    seed: int = 0
    shuffle_buffer: int = Field(2000, ge=0, description="samples held by the keyed shuffle buffer")
    workers: int = Field(1, ge=0, description="DataLoader worker processes reading and decoding while the model "
                         "trains (0: in this process); the order is deterministic for a fixed count")
    cache_bytes: int = Field(512 << 20, ge=0, description="decoded samples kept in memory between epochs when "
                             "reading in this process (workers 0): later epochs skip reading and decoding the "
                             "shards that fit; the batches are the same (0: read every epoch)")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "amp"] = Field("auto", description="auto: mixed precision on CUDA, fp32 on CPU")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="images larger than this are skipped, never decoded")
    log_every: int = Field(10, ge=1, description="steps between rows of the step metrics table")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's choice; 1 is "
                                "faster on a machine shared with other jobs)")
