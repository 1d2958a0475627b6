"""A graph run folder: ``model.safetensors`` plus ``model_config.json`` naming the graph architecture.

The record says which objective trained the run and which embedder reads it (``embedder``), so commands
given only ``--run`` find the right component by asking the run, never by guessing from file names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from poisonlab.graph.model import GraphClip, GraphClipConfig, graph_tokenizer
from poisonlab.models.zoo import CHECKPOINT_NAME, CONFIG_NAME, CheckpointError, read_state_dict
from poisonlab.shards.layout import atomic_path, atomic_write_text

GRAPH_ARCH = "graph_clip"
GRAPH_EMBEDDER = "graph_clip"
GRAPH_EVALUATOR = "graph_clip"


@dataclasses.dataclass
class LoadedGraphModel:
    """A graph run ready for inference: model (eval mode), its config and tokenizer."""

    model: GraphClip
    cfg: GraphClipConfig
    tokenizer: Any


def save_graph_run(model: GraphClip, run_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Weights first (temp name, then rename), then ``model_config.json``: its presence proves a whole checkpoint."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / CHECKPOINT_NAME) as tmp:
        save_file(state, str(tmp))
    meta = {"arch": GRAPH_ARCH, "graph_cfg": model.cfg.to_dict(), "embedder": GRAPH_EMBEDDER,
            "evaluator": GRAPH_EVALUATOR, **(extra or {})}
    atomic_write_text(run_dir / CONFIG_NAME, json.dumps(meta, indent=2, sort_keys=True))
    return run_dir / CHECKPOINT_NAME


def read_graph_config(run_dir: Path) -> GraphClipConfig | None:
    """The run's graph architecture; None when the folder is not a graph run."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        return None
    cfg = meta.get("graph_cfg") if isinstance(meta, dict) else None
    return GraphClipConfig.from_dict(cfg) if isinstance(cfg, dict) else None


def is_graph_run(run_dir: Path) -> bool:
    return read_graph_config(run_dir) is not None


def load_graph_run(run_dir: Path, device: str | torch.device = "cpu") -> LoadedGraphModel:
    """Rebuild the architecture from its record and load the safetensors weights (never unpickled)."""
    cfg = read_graph_config(run_dir)
    if cfg is None:
        raise CheckpointError(f"{run_dir} is not a graph run ({CONFIG_NAME} with a graph_cfg)")
    model = GraphClip(cfg)
    state = read_state_dict(Path(run_dir) / CHECKPOINT_NAME)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{run_dir}: weights do not match the graph architecture "
                              f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    return LoadedGraphModel(model.to(device).eval(), cfg, graph_tokenizer(cfg))
