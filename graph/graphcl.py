"""The ``graphcl`` objective: graph-only contrastive learning (You et al., GraphCL, 2020).

Two random views of each graph in a batch (node dropping, edge perturbation, attribute masking, opt-in subgraph crops:
``graph.augment``), embedded by the same GIN encoder and projection, and pulled together against the
batch's other graphs by a symmetric InfoNCE at a fixed temperature (open_clip's ``ClipLoss`` with a
constant scale). Descriptions are not read. The run is a graph run without a text tower: the embedder
writes only its ``graph`` space, and evaluation reports the linear probe and probe ASR (no zero-shot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch
from pydantic import Field, field_validator

from poisonlab.graph.augment import AUGMENTATIONS, GraphView, random_view
from poisonlab.graph.codec import GraphOnlyCodec
from poisonlab.graph.model import GraphClip, GraphClipConfig
from poisonlab.graph.run import GRAPH_ARCH, save_graph_run
from poisonlab.models.zoo import CHECKPOINT_NAME, read_state_dict
from poisonlab.pipelines.registry import Params
from poisonlab.shards.graphs import GRAPH_EXTENSIONS
from poisonlab.training.config import TrainSettings
from poisonlab.training.objectives import OBJECTIVES, Built, LossOutput

_D = GraphClipConfig()
# GraphCL's three perturbation views. ``subgraph`` is opt-in: on the generated graphs (a class is a small motif
# on a larger random base) crops lowered the linear probe (0.48 alone, 0.57 mixed in, against 0.64 without;
# README "Graphs")
DEFAULT_VIEWS = ("drop_nodes", "perturb_edges", "mask_attributes")


class GraphCLParams(Params):
    in_features: int = Field(_D.in_features, ge=1, description="node feature width (graphs of another width are skipped)")
    gin_layers: int = Field(_D.gin_layers, ge=1)
    gin_hidden: int = Field(_D.gin_hidden, ge=1)
    pooling: str = Field(_D.pooling, pattern="^(add|mean)$")
    embed_dim: int = Field(_D.embed_dim, ge=1, description="projection dimension")
    augmentations: tuple[str, ...] = Field(DEFAULT_VIEWS, description="views drawn from these, one per view "
                                           f"(of {', '.join(AUGMENTATIONS)})")
    rate: float = Field(0.2, ge=0.0, lt=1.0, description="share of nodes dropped / edges perturbed / nodes masked / "
                      "nodes cropped")
    temperature: float = Field(0.5, gt=0.0, description="InfoNCE temperature (GraphCL uses 0.5)")

    @field_validator("augmentations", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else value

    @field_validator("augmentations")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - set(AUGMENTATIONS)
        if not value or unknown:
            raise ValueError(f"augmentations must be some of {sorted(AUGMENTATIONS)}; got {sorted(unknown) or 'none'}")
        return value

    def config(self) -> GraphClipConfig:
        return GraphClipConfig(in_features=self.in_features, gin_layers=self.gin_layers, gin_hidden=self.gin_hidden,
                               pooling=self.pooling, embed_dim=self.embed_dim, text=False)  # type: ignore[arg-type]


class GraphCLObjective:
    """Two augmented views per graph, NT-Xent-style symmetric InfoNCE between them."""

    step_logs = ()
    payload_extensions = GRAPH_EXTENSIONS  # capability: the shard payloads this objective trains on

    def __init__(self, params: GraphCLParams) -> None:
        self.params = params
        self.cfg = params.config()
        self.loss_fn = open_clip.ClipLoss()

    def build(self, settings: TrainSettings) -> Built:
        return Built(GraphClip(self.cfg), GraphOnlyCodec(self.cfg.in_features), GRAPH_ARCH)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        whole, p = GraphView.of(batch["graphs"]), self.params
        first = model.encode_graph(random_view(whole, p.augmentations, p.rate))  # type: ignore[operator]
        second = model.encode_graph(random_view(whole, p.augmentations, p.rate))  # type: ignore[operator]
        scale = torch.tensor(1.0 / p.temperature, device=first.device)
        return LossOutput(self.loss_fn(first, second, scale))

    def after_step(self, model: torch.nn.Module) -> None:
        """Nothing to adjust: the temperature is fixed."""

    def save(self, built: Built, run_dir: Path, extra: dict[str, Any]) -> None:
        save_graph_run(built.model, run_dir, extra)  # type: ignore[arg-type]

    def load(self, run_dir: Path) -> dict[str, torch.Tensor]:
        return read_state_dict(Path(run_dir) / CHECKPOINT_NAME)


OBJECTIVES.register("graphcl", GraphCLParams, summary="GraphCL: graph-only contrastive learning with node dropping, "
                    "edge perturbation and attribute masking views")(GraphCLObjective)
