"""What a malicious client does to its update before sending it: model replacement (Bagdasaryan et al. 2020).

Under FedAvg with n clients and server learning rate eta, an attacker that scales its delta by
gamma = n / eta replaces the global model with its own once the benign deltas roughly cancel.
"Constrain-and-scale" keeps the boosted delta inside a norm bound, so a server that clips (``norm_clip``)
or flags large norms sees an update of unremarkable size. Pure functions: deltas in, new deltas out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from poisonlab.federated.updates import Delta


def delta_norm(delta: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of a delta over all of its tensors together."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in delta.values()))


def scale_delta(delta: Mapping[str, torch.Tensor], factor: float) -> Delta:
    """Every tensor times ``factor`` (a new dict; the input is unchanged)."""
    return {name: (t * factor).to(t.dtype) for name, t in delta.items()}


def replacement_factor(clients: int, server_lr: float = 1.0) -> float:
    """gamma = n / eta: the boost with which one client's delta replaces the FedAvg aggregate."""
    if clients < 1 or server_lr <= 0:
        raise ValueError(f"need clients >= 1 and server_lr > 0 (got {clients}, {server_lr})")
    return clients / server_lr


def constrain_norm(delta: Mapping[str, torch.Tensor], bound: float) -> Delta:
    """``delta`` scaled down onto the L2 ball of radius ``bound`` when it lies outside (else a copy)."""
    if bound <= 0:
        raise ValueError(f"norm bound must be > 0, not {bound}")
    norm = delta_norm(delta)
    return scale_delta(delta, bound / norm if norm > bound else 1.0)


def model_replacement(delta: Mapping[str, torch.Tensor], boost: float, norm_bound: float | None = None) -> Delta:
    """Scale ``delta`` by ``boost``; with ``norm_bound``, then project it onto that ball (constrain-and-scale)."""
    boosted = scale_delta(delta, boost)
    return boosted if norm_bound is None else constrain_norm(boosted, norm_bound)
