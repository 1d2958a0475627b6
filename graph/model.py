"""A graph–text CLIP: a GIN graph encoder and open_clip's text tower, projected into one embedding space.

The graph side is torch_geometric's ``GIN`` (sum-aggregating GIN convolutions, as expressive as the
1-WL test, so motifs such as cycles and cliques are separable) followed by a global pooling and a linear
projection. The text side is built by open_clip's own ``_build_text_tower`` from a ``CLIPTextCfg``, so it
is the same transformer (and BPE tokenizer) an image CLIP uses, only small. The architecture is a plain
record (``GraphClipConfig``) saved beside the weights: a run folder rebuilds its model without pickles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import torch
from torch import nn

Pooling = Literal["add", "mean"]


@dataclasses.dataclass(frozen=True)
class GraphClipConfig:
    """Everything that shapes the weights (the saved ``graph_config.json``)."""

    in_features: int = 12  # the generated dataset's degree one-hot (cap 10) plus a constant channel
    gin_layers: int = 3
    gin_hidden: int = 64
    pooling: Pooling = "add"
    embed_dim: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 32
    init_logit_scale: float = math.log(1 / 0.07)
    text: bool = True  # False: a graph-only encoder (GraphCL), no text tower

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphClipConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pool(pooling: Pooling):  # type: ignore[no-untyped-def]
    from torch_geometric.nn import global_add_pool, global_mean_pool

    return {"add": global_add_pool, "mean": global_mean_pool}[pooling]


class GraphEncoder(nn.Module):
    """GIN node embeddings -> one vector per graph (global pooling) -> the shared embedding dimension."""

    def __init__(self, cfg: GraphClipConfig) -> None:
        super().__init__()
        from torch_geometric.nn.models import GIN

        self.gin = GIN(cfg.in_features, cfg.gin_hidden, cfg.gin_layers)
        self.proj = nn.Linear(cfg.gin_hidden, cfg.embed_dim)
        self.pooling = cfg.pooling

    def forward(self, graphs: Any) -> torch.Tensor:
        nodes = self.gin(graphs.x, graphs.edge_index)
        return self.proj(_pool(self.pooling)(nodes, graphs.batch, size=graphs.num_graphs))


def build_text_tower(cfg: GraphClipConfig) -> nn.Module:
    """open_clip's text transformer (argmax/EOT pooling, linear projection) at the configured size."""
    from open_clip.model import CLIPTextCfg, _build_text_tower

    text_cfg = CLIPTextCfg(context_length=cfg.context_length, width=cfg.text_width, heads=cfg.text_heads,
                           layers=cfg.text_layers)
    return _build_text_tower(cfg.embed_dim, text_cfg)


class GraphClip(nn.Module):
    """A graph encoder with (``cfg.text``) or without a text tower. ``forward(graphs, texts)`` returns normalised graph and text features and the learned scale, the
    triple open_clip's ``ClipLoss`` takes, so the image CLIP's loss is used unchanged."""

    def __init__(self, cfg: GraphClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.graph = GraphEncoder(cfg)
        self.text = build_text_tower(cfg) if cfg.text else None
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))

    def encode_graph(self, graphs: Any, normalize: bool = True) -> torch.Tensor:
        out = self.graph(graphs)
        return nn.functional.normalize(out, dim=-1) if normalize else out

    @property
    def has_text(self) -> bool:
        """Capability: whether descriptions can be embedded (zero-shot needs it)."""
        return self.text is not None

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if self.text is None:
            raise ValueError("this graph model was trained without a text tower (graph-only contrastive learning)")
        out = self.text(tokens)
        return nn.functional.normalize(out, dim=-1) if normalize else out

    def forward(self, graphs: Any, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_graph(graphs), self.encode_text(texts), self.logit_scale.exp()


def graph_tokenizer(cfg: GraphClipConfig):  # type: ignore[no-untyped-def]
    """open_clip's BPE tokenizer (shipped inside the package: works offline) at the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=cfg.context_length)
