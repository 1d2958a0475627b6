"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

``torch.save`` of an optimizer state would be a pickle that ``--resume`` later unpickles; a run folder
may come from anyone, so the optimizer's tensors go to ``optimizer.safetensors`` (flat names
``state.<param index>.<name>``) and its scalars and parameter groups to ``train_state.json``. The model
itself is written by the objective (CLIP: ``model.safetensors`` + ``model_config.json``, loadable by
``poisonlab.models``). Every file is written under a unique temporary name and renamed; the state JSON is
renamed last, so it marks a complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from poisonlab.shards.layout import atomic_path, atomic_write_json
from poisonlab.training.state import Progress, TrainState

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "train_state.json"


class ResumeError(ValueError):
    """A run folder that cannot be resumed: missing state, or a different configuration."""


def state_dict_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into named tensors and a JSON-safe rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return state_dict_to_flat(optimizer.state_dict())


def optimizer_from_flat(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in tensors.items():
        _, index, name = flat.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_training_state(run_dir: Path, state: TrainState, config: dict[str, Any]) -> None:
    """Write the optimizer and the progress (the weights were saved by the objective just before)."""
    run_dir = Path(run_dir)
    tensors, rest = state_dict_to_flat(state.optimizer or {"state": {}, "param_groups": []})
    with atomic_path(run_dir / OPTIMIZER_NAME) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(run_dir / STATE_NAME, {"progress": state.progress.to_dict(), "config": config,
                                             "optimizer": rest, "grad_scaler": state.grad_scaler})


def read_training_state(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATE_NAME
    if not path.exists():
        return None
    return json.loads(path.read_text())


def load_training_state(run_dir: Path, saved: dict[str, Any], weights: dict[str, torch.Tensor]) -> TrainState:
    """The ``TrainState`` of a run folder, from its JSON state, optimizer tensors and the objective's weights."""
    path = Path(run_dir) / OPTIMIZER_NAME
    if not path.exists():
        raise ResumeError(f"cannot resume {run_dir}: {OPTIMIZER_NAME} is missing")
    try:
        optimizer = optimizer_from_flat(load_file(str(path)), saved["optimizer"])
    except Exception as exc:  # not safetensors, or another model's optimizer: report, never unpickle
        raise ResumeError(f"cannot resume {run_dir}: {OPTIMIZER_NAME} is unusable ({type(exc).__name__})") from None
    return TrainState(weights=weights, optimizer=optimizer, progress=Progress.from_dict(saved["progress"]),
                      grad_scaler=saved.get("grad_scaler") or None)
