"""open_clip's ``local-dir:`` folder layout, so poisonlab runs and open_clip tools read each other's models.

open_clip (``create_model('local-dir:DIR')``, ``python -m open_clip_train.main --model local-dir:DIR``) reads
``DIR/open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and the weights file beside it. Every
poisonlab run folder is written in that layout too, and any such folder (a run, an exported architecture,
a model saved by open_clip) is read back here, choosing the weights file the way open_clip does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poisonlab.models.errors import CheckpointError

OPEN_CLIP_CONFIG = "open_clip_config.json"
LOCAL_DIR = "local-dir:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# open_clip's own preference (factory._find_checkpoint_in_dir), safetensors first.
PREFERRED_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "pytorch_model.bin",
                     "pytorch_model.pth", "model.pth")


def local_dir(arch: str) -> Path | None:
    """The folder of a ``local-dir:DIR`` architecture, None for any other spelling."""
    return Path(arch[len(LOCAL_DIR):]) if arch.startswith(LOCAL_DIR) else None


def config_path(folder: Path) -> Path:
    """``folder/open_clip_config.json``, or a one-line error saying the folder is not in open_clip's layout."""
    path = Path(folder) / OPEN_CLIP_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an open_clip local-dir folder: {OPEN_CLIP_CONFIG} missing")
    return path


def read_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, preprocess_cfg) of a local-dir folder."""
    path = config_path(folder)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise CheckpointError(f"{path} has no 'model_cfg' object")
    preprocess = data.get("preprocess_cfg") or {}
    return data["model_cfg"], preprocess if isinstance(preprocess, dict) else {}


def find_weights(folder: Path) -> Path | None:
    """The weights file open_clip would load from ``folder`` (None when there is none).

    Several candidates of which none has a preferred name are refused rather than guessed at.
    """
    folder = Path(folder)
    for name in PREFERRED_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()) if folder.is_dir() else []
    if len(found) > 1:
        raise CheckpointError(f"{folder} holds several weights files ({', '.join(p.name for p in found)}); "
                              "name one as --weights")
    return found[0] if found else None


def config_document(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]) -> str:
    """The text of an ``open_clip_config.json`` (sorted keys: the same model gives the same bytes)."""
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()}
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2, sort_keys=True)
