"""Issue 11, finding 5: clear one-line errors instead of tracebacks, through the command line.

A safetensors file that is a pickle or holds other shapes, NaN weights, and a full disk (whose aborted
writer must not leak its temporary files)."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest
from conftest import make_synth, one_line_error

from poisonlab.flows.cli import app
from poisonlab.shards.layout import temp_files
from poisonlab.shards.synth import SynthSource, SynthSpec, write_eval_metadata
from poisonlab.shards.writer import ShardWriter


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, Path]:
    """A valid run folder (random tiny weights) and a small labelled eval split."""
    import torch

    from poisonlab.models.zoo import ModelSpec, load_model, save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_checkpoint(load_model(ModelSpec(arch="poisonlab-tiny-32")).model, root / "run", "poisonlab-tiny-32")
    spec = SynthSpec(samples=48, samples_per_shard=48, partial_rate=0.0, noise_rate=0.0, junk_rate=0.0)
    source = SynthSource(spec, split="eval", balanced=True)
    make_synth(root / "scratch")  # a plain shard folder to embed
    from poisonlab.pipelines.executor import run_local
    from poisonlab.shards.plan import finalize_folder, plan_source_tasks

    finalize_folder(root / "eval", run_local(plan_source_tasks(source, source.shards(), root / "eval")))
    write_eval_metadata(root / "eval")
    return {"run": root / "run", "eval": root / "eval", "shards": root / "scratch"}


def _broken_run(lab: dict[str, Path], tmp_path: Path, damage: str) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(lab["run"], run)
    weights = run / "model.safetensors"
    if damage == "pickle":
        weights.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    else:
        state = load_file(str(weights))
        name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
        if damage == "shapes":
            state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
        else:
            state[name] = torch.full_like(state[name], float("nan"))
        save_file(state, str(weights))
    return run


@pytest.mark.parametrize("damage, words", [
    ("pickle", ["not a valid safetensors file"]),
    ("shapes", ["does not match architecture"]),
    ("nan", ["the model's weights are not finite"]),
])
def test_evaluate_reports_an_unusable_checkpoint_in_one_line(cli, lab, tmp_path, damage, words):
    run = _broken_run(lab, tmp_path, damage)
    one_line_error(cli.invoke(app, ["evaluate", "--run", str(run), "--eval", str(lab["eval"]), "--device", "cpu"]),
                   *words)


@pytest.mark.parametrize("damage", ["pickle", "nan"])
def test_embed_reports_an_unusable_weights_file_in_one_line(cli, lab, tmp_path, damage):
    run = _broken_run(lab, tmp_path, damage)
    res = cli.invoke(app, ["embed", str(lab["shards"]), "--out", str(tmp_path / "emb"), "--run", str(run),
                           "--executor", "local", "--device", "cpu"])
    one_line_error(res)


class _FullDisk:
    """A file handle on a disk that fills up: writes fail, and so does the flush when it is closed."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", self.real.name)

    def close(self) -> None:
        self.real.close()
        raise OSError(errno.ENOSPC, "No space left on device", self.real.name)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)


def test_a_full_disk_is_one_line_and_leaks_no_temp_file(cli, tmp_path, monkeypatch):
    original = ShardWriter.__init__

    def init(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        original(self, *args, **kwargs)
        self._fh = _FullDisk(self._fh)

    monkeypatch.setattr(ShardWriter, "__init__", init)
    out = tmp_path / "out"
    res = cli.invoke(app, ["synth", "--out", str(out), "--samples", "20", "--eval-per-class", "0",
                           "--executor", "local", "--json"])
    one_line_error(res, "No space left on device")
    assert temp_files(out) == []
