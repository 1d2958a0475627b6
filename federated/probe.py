"""The clean probe set of client inspection: a few evaluation images each client's local encoder embeds.

EmInspector (Qian et al. 2024) compares how clients' local encoders embed the same small clean set; a
backdoored encoder moves its embeddings differently from the honest majority. The probe images are chosen
by a keyed rank of their keys (never by label or by the attack), stored once per run as a uint8 tensor, and
embedded where each client's update is computed (the same function the server would call on the received
weights).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from poisonlab.federated.reuse import inference_model
from poisonlab.pipelines.keyed import keyed_u64
from poisonlab.training.eval_data import load_eval_split
from poisonlab.training.features import image_features
from poisonlab.training.image_codec import ImageFormat


def probe_images(eval_dir: Path, count: int, seed: int) -> torch.Tensor:
    """``count`` images of the split (keyed choice), fitted to one size: ``[N, H, W, 3]`` uint8."""
    split = load_eval_split(Path(eval_dir))
    order = sorted(range(len(split)), key=lambda i: (keyed_u64(seed, "federated/probe", split.keys[i]), split.keys[i]))
    chosen = [split.images[i] for i in order[:count]]
    size = max(a.shape[0] for a in chosen)
    fitted = [a if a.shape[:2] == (size, size) else np.asarray(Image.fromarray(a).resize((size, size)))
              for a in chosen]
    return torch.from_numpy(np.stack(fitted).astype(np.uint8))


def embed_probe(weights: dict[str, torch.Tensor], arch: str, images: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings of the probe by the model ``arch`` with ``weights`` (CPU, eval mode)."""
    loaded = inference_model(arch)
    loaded.model.load_state_dict(weights)
    model = loaded.model.eval()
    fmt = ImageFormat.for_model(model, loaded.image_size)
    return image_features(model, fmt, [a for a in images.numpy()], torch.device("cpu"))
