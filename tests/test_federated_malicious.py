"""Model replacement: boosting by n / eta replaces the FedAvg aggregate; constrain-and-scale bounds the norm."""

from __future__ import annotations

import pytest
import torch

from poisonlab.federated.aggregators import AGGREGATORS
from poisonlab.federated.malicious import (
    constrain_norm,
    delta_norm,
    model_replacement,
    replacement_factor,
    scale_delta,
)
from poisonlab.federated.updates import ClientUpdate

DELTA = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}  # norm 5


def test_scale_and_norm_are_pure() -> None:
    scaled = scale_delta(DELTA, 2.0)
    assert delta_norm(DELTA) == pytest.approx(5.0) and delta_norm(scaled) == pytest.approx(10.0)
    assert DELTA["a"].tolist() == [3.0, 0.0] and scaled["b"].shape == (1, 1)


def test_constrain_norm_projects_only_outside_the_ball() -> None:
    assert delta_norm(constrain_norm(DELTA, 2.0)) == pytest.approx(2.0)
    assert constrain_norm(DELTA, 2.0)["a"].tolist() == pytest.approx([1.2, 0.0])
    assert constrain_norm(DELTA, 10.0)["a"].tolist() == [3.0, 0.0]
    with pytest.raises(ValueError):
        constrain_norm(DELTA, 0.0)


def test_model_replacement_boosts_then_constrains() -> None:
    assert model_replacement(DELTA, 4.0)["a"].tolist() == [12.0, 0.0]
    bounded = model_replacement(DELTA, 4.0, norm_bound=8.0)
    assert delta_norm(bounded) == pytest.approx(8.0) and bounded["a"].tolist() == pytest.approx([4.8, 0.0])


def test_a_boost_of_n_over_eta_replaces_the_fedavg_aggregate() -> None:
    """Benign deltas that cancel leave exactly the attacker's target delta after FedAvg."""
    target = {"w": torch.tensor([1.0, -2.0])}
    gamma = replacement_factor(clients=4, server_lr=1.0)
    benign = [ClientUpdate(i, {"w": torch.tensor(v)}) for i, v in enumerate([[0.5, 0.5], [-0.5, 0.0], [0.0, -0.5]])]
    attacker = ClientUpdate(3, model_replacement(target, gamma))
    result = AGGREGATORS.create("fedavg").aggregate([*benign, attacker])
    torch.testing.assert_close(result.delta["w"], target["w"])
    with pytest.raises(ValueError):
        replacement_factor(0)
