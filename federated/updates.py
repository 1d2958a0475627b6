"""Client updates as the server sees them: deltas from the global weights, flattened for the rules.

An update is a dict of tensors (parameter name -> ``local - global``) with the client's sample count.
Aggregation rules work on one ``[clients, parameters]`` matrix (``stack_updates``), so every rule is a few
vectorised torch operations; ``unflatten`` turns the result back into named tensors. Only floating-point
tensors are deltas (integer buffers such as counters are not averaged): ``model_delta`` keeps those alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

Delta = dict[str, torch.Tensor]


class UpdateError(ValueError):
    """Updates that cannot be combined (different parameter names or shapes, no updates, bad counts)."""


@dataclasses.dataclass(frozen=True)
class ClientUpdate:
    """One client's delta from the global weights and how many samples it trained on (fedavg's weight)."""

    client: int
    delta: Mapping[str, torch.Tensor]
    samples: int = 1


@dataclasses.dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of a delta, in a fixed (sorted) order: how a flat vector maps back."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]

    @classmethod
    def of(cls, delta: Mapping[str, torch.Tensor]) -> Layout:
        names = tuple(sorted(delta))
        return cls(names, tuple(delta[n].shape for n in names), tuple(delta[n].dtype for n in names))


def model_delta(local: Mapping[str, torch.Tensor], global_: Mapping[str, torch.Tensor]) -> Delta:
    """``local - global`` for every floating-point tensor (what a client sends)."""
    if local.keys() != global_.keys():
        raise UpdateError("local and global weights have different parameter names")
    return {n: (local[n].detach().float() - global_[n].detach().float()).to(global_[n].dtype)
            for n in sorted(local) if global_[n].is_floating_point()}


def apply_delta(weights: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> Delta:
    """New global weights: ``weights + delta`` where a delta exists, other tensors copied unchanged."""
    unknown = sorted(set(delta) - set(weights))
    if unknown:
        raise UpdateError(f"delta names parameters the model lacks: {', '.join(unknown[:5])}")
    return {n: (w + delta[n].to(w.dtype)) if n in delta else w.clone() for n, w in weights.items()}


def stack_updates(updates: Sequence[ClientUpdate]) -> tuple[torch.Tensor, Layout]:
    """A ``[clients, parameters]`` float32 matrix of the deltas, checked to share one layout."""
    if not updates:
        raise UpdateError("no client updates to aggregate")
    layout = Layout.of(updates[0].delta)
    for update in updates:
        if Layout.of(update.delta) != layout:
            raise UpdateError(f"client {update.client}'s update has other parameters or shapes than "
                              f"client {updates[0].client}'s")
        if update.samples < 0:
            raise UpdateError(f"client {update.client} reports {update.samples} samples")
    rows = [torch.cat([u.delta[n].detach().reshape(-1).float() for n in layout.names]) if layout.names
            else torch.zeros(0) for u in updates]
    return torch.stack(rows), layout


def unflatten(vector: torch.Tensor, layout: Layout) -> Delta:
    """Named tensors (in their original shapes and dtypes) from a flat vector."""
    out: Delta = {}
    offset = 0
    for name, shape, dtype in zip(layout.names, layout.shapes, layout.dtypes, strict=True):
        size = shape.numel()
        out[name] = vector[offset:offset + size].reshape(shape).to(dtype)
        offset += size
    return out
