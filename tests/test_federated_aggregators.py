"""Aggregation rules on small hand-computed vectors (two named tensors each, so flattening is exercised)."""

from __future__ import annotations

import math

import pytest
import torch

from poisonlab.federated.aggregators import AGGREGATORS, cosine_distances, krum_scores
from poisonlab.federated.updates import ClientUpdate, UpdateError, apply_delta, model_delta
from poisonlab.pipelines.registry import RegistryError


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _update(client: int, values: list[float], samples: int = 1) -> ClientUpdate:
    """A delta of two tensors: "a" holds the first two values (as 1x2), "b" the rest."""
    t = torch.tensor(values, dtype=torch.float32)
    return ClientUpdate(client, {"a": t[:2].reshape(1, 2), "b": t[2:]}, samples)


def _flat(delta: dict[str, torch.Tensor]) -> list[float]:
    return torch.cat([delta["a"].reshape(-1), delta["b"].reshape(-1)]).tolist()


def _run(name: str, updates: list[ClientUpdate], **params):
    return AGGREGATORS.create(name, params).aggregate(updates, 0)


def test_every_rule_is_registered_with_typed_params() -> None:
    assert {"fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_clip", "flame"} <= set(AGGREGATORS.names())
    with pytest.raises(RegistryError, match="unknown parameter"):
        AGGREGATORS.create("krum", {"beta": 0.1})
    with pytest.raises(RegistryError, match="invalid parameters"):
        AGGREGATORS.create("trimmed_mean", {"beta": 0.5})


def test_fedavg_weights_by_samples() -> None:
    result = _run("fedavg", [_update(0, [1, 0, 2], 1), _update(1, [4, 3, -1], 2)])
    assert _flat(result.delta) == pytest.approx([3, 2, 0])
    assert result.delta["a"].shape == (1, 2) and result.kept == (0, 1) and result.excluded == {}
    assert result.norms[1] == pytest.approx(math.sqrt(26))


def test_fedavg_refuses_mismatched_updates() -> None:
    with pytest.raises(UpdateError, match="other parameters or shapes"):
        _run("fedavg", [_update(0, [1, 2, 3]), _update(1, [1, 2, 3, 4])])
    with pytest.raises(UpdateError, match="no client updates"):
        _run("fedavg", [])


def test_median_per_coordinate_odd_and_even() -> None:
    odd = [_update(0, [1, 10, -3]), _update(1, [2, -5, 0]), _update(2, [100, 0, 7])]
    assert _flat(_run("median", odd).delta) == [2, 0, 0]
    even = odd + [_update(3, [3, 4, 1])]
    assert _flat(_run("median", even).delta) == pytest.approx([2.5, 2, 0.5])


def test_trimmed_mean_cuts_each_end_per_coordinate() -> None:
    updates = [_update(i, v) for i, v in enumerate([[1, 50, 0], [2, -50, 0], [3, 1, 0], [4, 2, 9], [1000, 3, -9]])]
    result = _run("trimmed_mean", updates, beta=0.2)  # floor(0.2 * 5) = 1 value cut from each end
    assert _flat(result.delta) == pytest.approx([3, 2, 0])
    assert result.report()["trimmed_each_end"] == 1
    assert _flat(_run("trimmed_mean", updates, beta=0.0).delta) == pytest.approx([202, 1.2, 0])


def test_krum_scores_and_choice_with_an_outlier() -> None:
    updates = [_update(0, [0, 0, 0]), _update(1, [1, 0, 0]), _update(2, [0, 1, 0]), _update(3, [0, 0, 1]),
               _update(4, [10, 10, 10])]
    matrix = torch.stack([torch.tensor(_flat(dict(u.delta))) for u in updates])
    # n=5, f=1: each score sums the 2 nearest squared distances. Client 0 is at 1 from 1, 2, 3: score 2;
    # client 1 is at 1 from 0 and 2 from 2, 3: score 3; client 4 is at 81 + 100 + 100 = 281 from 1 and 2: 562.
    scores = krum_scores(matrix, f=1)
    assert scores.tolist() == pytest.approx([2, 3, 3, 3, 562])
    result = _run("krum", updates, f=1)
    assert result.kept == (0,) and _flat(result.delta) == [0, 0, 0]
    assert result.excluded[4].startswith("krum")
    multi = _run("multi_krum", updates, f=1, m=4)
    assert multi.kept == (0, 1, 2, 3) and _flat(multi.delta) == pytest.approx([0.25, 0.25, 0.25])
    assert _run("multi_krum", updates, f=1).kept == (0, 1, 2, 3)  # m defaults to n - f


def test_krum_needs_enough_clients() -> None:
    with pytest.raises(UpdateError, match="n > f \\+ 2"):
        _run("krum", [_update(0, [0, 0, 0]), _update(1, [1, 1, 1]), _update(2, [2, 2, 2])], f=1)


def test_norm_clip_bounds_norms_then_averages() -> None:
    updates = [_update(0, [3, 4, 0], 1), _update(1, [0, 0, 1], 1)]  # norms 5 and 1
    result = _run("norm_clip", updates, bound=2.0)
    assert _flat(result.delta) == pytest.approx([0.6, 0.8, 0.5])  # (1.2, 1.6, 0) and (0, 0, 1), averaged
    assert result.report()["clipped"] == [0]
    noisy = [_run("norm_clip", updates, bound=2.0, noise_std=0.1, seed=3) for _ in range(2)]
    assert _flat(noisy[0].delta) == _flat(noisy[1].delta) != _flat(result.delta)  # keyed noise: same every time
    other_round = AGGREGATORS.create("norm_clip", {"bound": 2.0, "noise_std": 0.1, "seed": 3}).aggregate(updates, 1)
    assert _flat(other_round.delta) != _flat(noisy[0].delta)


def test_norm_clip_bound_holds_for_every_update() -> None:
    generator = torch.Generator().manual_seed(0)
    updates = [ClientUpdate(i, {"w": torch.randn(50, generator=generator) * (i + 1)}) for i in range(6)]
    result = _run("norm_clip", updates, bound=1.5)
    assert float(result.delta["w"].norm()) <= 1.5 + 1e-5


def _benign_and_attackers() -> list[ClientUpdate]:
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=generator)
    benign = [ClientUpdate(i, {"w": base + 0.1 * torch.randn(50, generator=generator)}, 10) for i in range(4)]
    flipped = ClientUpdate(4, {"w": -3 * base}, 10)
    scaled = ClientUpdate(5, {"w": 20 * torch.randn(50, generator=generator)}, 10)
    return [*benign, flipped, scaled]


def test_flame_excludes_flipped_and_scaled_updates_and_clips_to_the_median_norm() -> None:
    updates = _benign_and_attackers()
    result = _run("flame", updates, noise_lambda=0.0)
    assert result.kept == (0, 1, 2, 3) and set(result.excluded) == {4, 5}
    assert result.report()["majority_cluster"] is True
    norms = sorted(result.norms.values())
    median = (norms[2] + norms[3]) / 2
    assert result.report()["clip_bound"] == pytest.approx(median, rel=1e-5)
    kept = torch.stack([u.delta["w"] * min(1.0, median / float(u.delta["w"].norm())) for u in updates[:4]])
    torch.testing.assert_close(result.delta["w"], kept.mean(dim=0))
    noisy = _run("flame", updates, noise_lambda=0.01, seed=1)
    assert noisy.kept == result.kept and not torch.equal(noisy.delta["w"], result.delta["w"])
    assert torch.equal(noisy.delta["w"], _run("flame", updates, noise_lambda=0.01, seed=1).delta["w"])


def test_flame_with_too_few_updates_keeps_them() -> None:
    result = _run("flame", _benign_and_attackers()[3:5], noise_lambda=0.0)
    assert result.kept == (3, 4) and result.report()["majority_cluster"] is False


def test_cosine_distances_of_opposite_and_equal_directions() -> None:
    d = cosine_distances(torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]))
    assert d[0, 1] == pytest.approx(0) and d[0, 2] == pytest.approx(2) and d[0, 3] == pytest.approx(1)


def test_deltas_apply_back_to_weights() -> None:
    global_ = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    local = {"w": torch.tensor([1.5, 1.0]), "steps": torch.tensor(5)}
    delta = model_delta(local, global_)
    assert set(delta) == {"w"} and delta["w"].tolist() == [0.5, -1.0]  # integer buffers are not deltas
    new = apply_delta(global_, delta)
    assert new["w"].tolist() == [1.5, 1.0] and new["steps"].item() == 3
