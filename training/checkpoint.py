"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

``torch.save`` of an optimizer state would be a pickle that ``--resume`` later unpickles; a run folder
may come from anyone, so the optimizer's tensors go to ``optimizer.safetensors`` (flat names
``state.<param index>.<name>``) and its scalars and parameter groups to ``train_state.json``. The model
itself is written by ``poisonlab.models.save_checkpoint`` (``model.safetensors`` + ``model_config.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from poisonlab.models.zoo import CHECKPOINT_NAME, CONFIG_NAME, ModelSpec, load_model, save_checkpoint

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "train_state.json"


class ResumeError(ValueError):
    """A run folder that cannot be resumed: missing state, or a different configuration."""


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into named tensors and a JSON-safe rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in tensors.items():
        _, index, name = flat.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_training_state(
    run_dir: Path, model: torch.nn.Module, arch: str, optimizer: torch.optim.Optimizer,
    progress: dict[str, Any], config: dict[str, Any], scaler_state: dict[str, Any] | None = None,
) -> None:
    """Write weights, optimizer and progress; the state JSON is renamed into place last (the marker)."""
    run_dir = Path(run_dir)
    save_checkpoint(model, run_dir, arch, extra={"trained_by": "poisonlab train", "train_config": config})
    tensors, rest = optimizer_to_flat(optimizer)
    tmp = run_dir / (OPTIMIZER_NAME + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, run_dir / OPTIMIZER_NAME)
    _atomic_json(run_dir / STATE_NAME, {"progress": progress, "config": config, "optimizer": rest,
                                        "grad_scaler": scaler_state})


def read_training_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATE_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load weights and optimizer state saved by ``save_training_state`` into live objects."""
    run_dir = Path(run_dir)
    for name in (CHECKPOINT_NAME, CONFIG_NAME, OPTIMIZER_NAME):
        if not (run_dir / name).exists():
            raise ResumeError(f"cannot resume {run_dir}: {name} is missing")
    loaded = load_model(ModelSpec.from_run(run_dir), "cpu").model
    model.load_state_dict(loaded.state_dict())
    try:
        tensors = load_file(str(run_dir / OPTIMIZER_NAME))
        optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
    except Exception as exc:  # not safetensors, or another model's optimizer: report, never unpickle
        raise ResumeError(f"cannot resume {run_dir}: {OPTIMIZER_NAME} is unusable ({type(exc).__name__})") from None
