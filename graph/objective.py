"""The ``graph_clip`` objective: graph–description pairs trained with open_clip's ``ClipLoss``.

The architecture is the objective's parameters (``--objective-param gin_layers=3`` ...), not
``settings.model`` (which names an image CLIP): graph models are built here, not by the model zoo. The
loop, run folder, resume, metrics and loss plot are the image CLIP's, unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import open_clip
import torch
from pydantic import Field

from poisonlab.graph.codec import GraphTextCodec
from poisonlab.graph.model import GraphClip, GraphClipConfig, graph_tokenizer
from poisonlab.graph.run import GRAPH_ARCH, save_graph_run
from poisonlab.models.tokens import TokenCache
from poisonlab.models.zoo import CHECKPOINT_NAME, read_state_dict
from poisonlab.pipelines.registry import Params
from poisonlab.shards.graphs import GRAPH_EXTENSIONS
from poisonlab.training.config import TrainSettings
from poisonlab.training.objectives import OBJECTIVES, Built, LossOutput

_D = GraphClipConfig()


class GraphClipParams(Params):
    in_features: int = Field(_D.in_features, ge=1, description="node feature width (graphs of another width are skipped)")
    gin_layers: int = Field(_D.gin_layers, ge=1, description="GIN convolutions")
    gin_hidden: int = Field(_D.gin_hidden, ge=1, description="GIN hidden width")
    pooling: str = Field(_D.pooling, pattern="^(add|mean)$", description="global pooling: add or mean")
    embed_dim: int = Field(_D.embed_dim, ge=1, description="shared graph/text embedding dimension")
    text_width: int = Field(_D.text_width, ge=8)
    text_layers: int = Field(_D.text_layers, ge=1)
    text_heads: int = Field(_D.text_heads, ge=1)
    context_length: int = Field(_D.context_length, ge=4, description="description tokens (longer ones are cut)")
    max_logit_scale: float = Field(100.0, gt=1.0, description="cap on exp(logit_scale), applied after every step")

    def config(self) -> GraphClipConfig:
        return GraphClipConfig.from_dict(self.model_dump(exclude={"max_logit_scale"}))


class GraphClipObjective:
    """Contrastive graph–description pretraining (symmetric InfoNCE, learned temperature), as CLIP."""

    step_logs = ("logit_scale",)
    payload_extensions = GRAPH_EXTENSIONS  # capability: the shard payloads this objective trains on

    def __init__(self, params: GraphClipParams) -> None:
        self.cfg = params.config()
        self.max_log_scale = math.log(params.max_logit_scale)
        self.loss_fn = open_clip.ClipLoss()

    def build(self, settings: TrainSettings) -> Built:
        model = GraphClip(self.cfg)
        return Built(model, GraphTextCodec(self.cfg.in_features, TokenCache(graph_tokenizer(self.cfg))), GRAPH_ARCH)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        graph_features, text_features, logit_scale = model(batch["graphs"], batch["texts"])
        return LossOutput(self.loss_fn(graph_features, text_features, logit_scale), {"logit_scale": logit_scale})

    def after_step(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0, self.max_log_scale)

    def save(self, built: Built, run_dir: Path, extra: dict[str, Any]) -> None:
        """``model.safetensors`` + ``model_config.json`` (with ``graph_cfg``): what ``graph.run`` reloads."""
        save_graph_run(built.model, run_dir, extra)  # type: ignore[arg-type]

    def load(self, run_dir: Path) -> dict[str, torch.Tensor]:
        return read_state_dict(Path(run_dir) / CHECKPOINT_NAME)


OBJECTIVES.register("graph_clip", GraphClipParams,
                    summary="graph CLIP: GIN graph encoder + open_clip text tower, ClipLoss on graph-description pairs"
                    )(GraphClipObjective)
