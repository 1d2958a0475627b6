"""The trainer: run folder contents, determinism on rerun, exact resume, safe optimizer state, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from poisonlab.models.zoo import ModelSpec, load_model
from poisonlab.training import TrainSettings, train_run
from poisonlab.training.checkpoint import ResumeError, optimizer_from_flat, optimizer_to_flat
from poisonlab.training.data import DataError
from poisonlab.training.schedule import CosineWarmup

SETTINGS = TrainSettings(epochs=2, batch_size=32, lr=5e-4, warmup_steps=2, shuffle_buffer=64, log_every=1)


@pytest.fixture(scope="module")
def trained(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "a"
    train_run(tiny_shards, out, SETTINGS, progress=False)
    return out


def test_run_folder_holds_checkpoint_metrics_and_plot(trained: Path) -> None:
    for name in ("model.safetensors", "model_config.json", "optimizer.safetensors", "train_state.json",
                 "metrics_steps.csv", "metrics_steps.parquet", "metrics_epochs.csv", "loss.png", "train_summary.json"):
        assert (trained / name).exists(), name
    steps = pd.read_csv(trained / "metrics_steps.csv")
    assert list(steps["step"]) == list(range(1, 15))  # 240 pairs // 32 = 7 steps per epoch
    assert steps["loss"].iloc[-1] < steps["loss"].iloc[0]
    assert steps["lr"].iloc[1] == pytest.approx(5e-4)  # warm-up over 2 steps, then cosine
    epochs = pd.read_csv(trained / "metrics_epochs.csv")
    assert list(epochs["epoch"]) == [0, 1] and (epochs["samples"] == 224).all()
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["samples"] == 448 and summary["skipped"] == {"partial_batch_dropped": 32}
    # the checkpoint loads through the model zoo, with the weights that were trained
    loaded = load_model(ModelSpec.from_run(trained))
    assert loaded.image_size == 32 and not torch.allclose(
        loaded.model.logit_scale, torch.tensor(torch.log(torch.tensor(1 / 0.07)).item()))


def test_same_seed_same_data_same_metrics(trained: Path, tiny_shards: Path, tmp_path: Path) -> None:
    train_run(tiny_shards, tmp_path / "b", SETTINGS, progress=False)
    cols = ["epoch", "step", "samples_seen", "loss", "lr", "logit_scale"]
    first = pd.read_csv(trained / "metrics_steps.csv")[cols]
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "b" / "metrics_steps.csv")[cols])
    other = TrainSettings(**{**SETTINGS.model_dump(), "seed": 1})
    train_run(tiny_shards, tmp_path / "c", other, progress=False)
    assert not first["loss"].equals(pd.read_csv(tmp_path / "c" / "metrics_steps.csv")["loss"])


def test_resume_continues_exactly(trained: Path, tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "split"
    assert train_run(tiny_shards, out, SETTINGS, progress=False, stop_after_epoch=1) is None
    assert json.loads((out / "train_state.json").read_text())["progress"]["epoch"] == 1
    with pytest.raises(ResumeError, match="--resume"):
        train_run(tiny_shards, out, SETTINGS, progress=False)
    changed = TrainSettings(**{**SETTINGS.model_dump(), "lr": 1e-3})
    with pytest.raises(ResumeError, match="lr"):
        train_run(tiny_shards, out, changed, resume=True, progress=False)
    result = train_run(tiny_shards, out, SETTINGS, resume=True, progress=False)
    assert result is not None and result.resumed_from_epoch == 1
    cols = ["epoch", "step", "loss", "lr", "logit_scale"]
    pd.testing.assert_frame_equal(pd.read_csv(trained / "metrics_steps.csv")[cols],
                                  pd.read_csv(out / "metrics_steps.csv")[cols])
    # a finished run resumes to its summary without training again
    again = train_run(tiny_shards, out, SETTINGS, resume=True, progress=False)
    assert again is not None and again.steps == result.steps


def test_optimizer_state_round_trips_without_pickle() -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, rest = optimizer_to_flat(opt)
    json.dumps(rest)  # everything that is not a tensor is plain JSON
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(optimizer_from_flat(tensors, json.loads(json.dumps(rest))))
    for a, b in zip(opt.state.values(), fresh.state.values(), strict=True):
        for k in a:
            assert torch.equal(a[k], b[k])


def test_schedule_warms_up_then_decays_to_zero() -> None:
    sched = CosineWarmup(1.0, warmup_steps=4, total_steps=20)
    assert [sched(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert sched(12) == pytest.approx(0.5)
    assert sched(20) == pytest.approx(0.0) and sched(25) == pytest.approx(0.0)


def test_a_stable_phase_holds_the_full_rate_before_the_decay() -> None:
    sched = CosineWarmup(1.0, warmup_steps=4, total_steps=20, stable_steps=8)
    assert [sched(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [sched(i) for i in range(4, 12)] == [1.0] * 8
    assert sched(16) == pytest.approx(0.5) and sched(20) == pytest.approx(0.0)
    plain = CosineWarmup(1.0, warmup_steps=4, total_steps=20)
    assert [CosineWarmup(1.0, 4, 20, stable_steps=0)(i) for i in range(22)] == [plain(i) for i in range(22)]


def test_decay_fraction_sets_the_stable_phase(tiny_shards: Path) -> None:
    from poisonlab.training.data import open_shard_set
    from poisonlab.training.session import schedule_for

    shards = open_shard_set(tiny_shards)
    whole = schedule_for(shards, TrainSettings(epochs=2, batch_size=8, warmup_steps=6, decay_fraction=1.0))
    late = schedule_for(shards, TrainSettings(epochs=2, batch_size=8, warmup_steps=6, decay_fraction=0.25))
    default = schedule_for(shards, TrainSettings(epochs=2, batch_size=8, warmup_steps=6))
    assert whole.stable_steps == 0
    assert late.stable_steps == round((late.total_steps - 6) * 0.75)
    assert default.stable_steps == round((default.total_steps - 6) * 0.7)  # the default decays over the last 30%
    assert late(6 + late.stable_steps - 1) == 1e-3 and late(late.total_steps) == pytest.approx(0.0)


def test_bad_input_fails_before_training(tmp_path: Path, tiny_shards: Path) -> None:
    with pytest.raises(DataError):
        train_run(tmp_path / "nothing", tmp_path / "run", SETTINGS, progress=False)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        train_run(tiny_shards, tmp_path / "run2", TrainSettings(model="no-such-model", epochs=1), progress=False)
