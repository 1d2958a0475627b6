"""``local_update``: the training loop without a run folder, continuable exactly (k + k steps == 2k steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from poisonlab.training import TrainSettings, TrainState, init_state, local_update, train_run

SETTINGS = TrainSettings(epochs=2, batch_size=32, lr=5e-4, warmup_steps=2, shuffle_buffer=64, workers=0,
                         device="cpu", log_every=1, threads=1)


def _assert_same_state(a: TrainState, b: TrainState) -> None:
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        assert torch.equal(a.weights[name], b.weights[name]), name
    assert a.optimizer is not None and b.optimizer is not None
    assert a.optimizer["param_groups"] == b.optimizer["param_groups"]
    assert a.optimizer["state"].keys() == b.optimizer["state"].keys()
    for index, entry in a.optimizer["state"].items():
        for key, value in entry.items():
            other = b.optimizer["state"][index][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (index, key)
    assert a.progress == b.progress


@pytest.mark.parametrize(("k", "workers"), [(3, 0), (6, 2)])
def test_k_steps_twice_equal_2k_steps(tiny_shards: Path, k: int, workers: int) -> None:
    """3 + 3 stops inside an epoch (7 steps in one process); with two data workers (6 steps an epoch, each
    worker dropping a partial batch) 6 + 6 stops after an epoch's last step, before its trailing skips."""
    settings = TrainSettings(**{**SETTINGS.model_dump(), "workers": workers})
    start = init_state(settings)
    untouched = start.copy()
    half, first_stats = local_update(start, tiny_shards, settings, steps=k)
    twice, _ = local_update(half, tiny_shards, settings, steps=k)
    once, once_stats = local_update(start, tiny_shards, settings, steps=2 * k)
    assert first_stats.steps == k and once_stats.steps == 2 * k and twice.progress.step == 2 * k
    assert half.progress.batch > 0 and half.rng is not None  # the second call resumed inside an epoch
    _assert_same_state(twice, once)
    for name, value in untouched.weights.items():  # the caller's state is never changed
        assert torch.equal(start.weights[name], value)
    assert not torch.equal(once.weights["logit_scale"], start.weights["logit_scale"])


def test_epochs_replayed_from_decoded_shards_train_the_same_weights(tiny_shards: Path) -> None:
    """The in-process cache of decoded shards (on by default) changes no float of a 3-epoch run."""
    settings = TrainSettings(**{**SETTINGS.model_dump(), "epochs": 3})
    cached, cached_stats = local_update(None, tiny_shards, settings)
    read, read_stats = local_update(None, tiny_shards, TrainSettings(**{**settings.model_dump(), "cache_bytes": 0}))
    assert cached_stats.steps == read_stats.steps == 21 and cached_stats.skipped == read_stats.skipped
    _assert_same_state(cached, read)


def test_train_is_the_same_loop_with_a_run_folder(tiny_shards: Path, tmp_path: Path) -> None:
    settings = TrainSettings(**{**SETTINGS.model_dump(), "epochs": 1})
    result = train_run(tiny_shards, tmp_path / "run", settings, progress=False)
    state, stats = local_update(None, tiny_shards, settings)
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert result is not None and stats.steps == result.steps == state.progress.step == 7
    assert state.progress.epoch == 1 and state.progress.batch == 0 and state.rng is None
    for name, value in saved.items():
        assert torch.equal(value, state.weights[name]), name
    assert round(stats.mean_loss, 6) == result.final_loss


def test_a_run_leaves_the_process_torch_settings_as_it_found_them(tiny_shards: Path, tmp_path: Path) -> None:
    """Threads and deterministic kernels are process-wide: a one-thread run must not leave everything after it
    in the caller's process (here: the rest of the test session) on one thread."""
    threads = torch.get_num_threads()
    if threads < 2:
        pytest.skip("the process already runs torch on one thread")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    local_update(None, tiny_shards, SETTINGS, steps=1)
    assert torch.get_num_threads() == threads
    train_run(tiny_shards, tmp_path / "run", TrainSettings(**{**SETTINGS.model_dump(), "epochs": 1}), progress=False)
    assert torch.get_num_threads() == threads
    assert (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) == before
