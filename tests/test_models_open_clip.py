"""open_clip interop (issue 13): run folders are open_clip ``local-dir:`` folders, open_clip_train trains a
poisonlab model on poisonlab shards and ``evaluate`` scores its checkpoint; pretrained tags load from the
cache or fail in one line; the random-init warning appears only when the weights really are random."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from conftest import one_line_error
from safetensors.torch import save_file

from poisonlab.flows.cli import app
from poisonlab.models.zoo import CheckpointError, ModelSpec, load_model, save_checkpoint

ARCH = "poisonlab-tiny-32"
RANDOM_INIT = "No pretrained weights loaded"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A poisonlab run folder with seeded random weights."""
    out = tmp_path_factory.mktemp("oc") / "run"
    torch.manual_seed(3)
    save_checkpoint(load_model(ModelSpec(ARCH)).model, out, ARCH)
    return out


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_run_folder_is_an_open_clip_local_dir(run: Path) -> None:
    assert json.loads((run / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]["image_size"] == 32
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{run}")  # open_clip alone
    ours = load_model(ModelSpec.from_run(run))
    assert _same_weights(model, ours.model)
    assert open_clip.get_tokenizer(f"local-dir:{run}")(["a red circle"]).shape == (1, 16)
    assert _same_weights(load_model(ModelSpec(f"local-dir:{run}")).model, ours.model)


def test_a_folder_saved_by_open_clip_alone_loads_as_a_run(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "foreign"
    folder.mkdir()
    shutil.copy(run / "open_clip_config.json", folder)
    shutil.copy(run / "model.safetensors", folder / "open_clip_model.safetensors")
    assert _same_weights(load_model(ModelSpec.from_run(folder)).model, load_model(ModelSpec.from_run(run)).model)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        ModelSpec.from_run(folder)
    for name in ("a.safetensors", "b.safetensors"):
        shutil.copy(run / "model.safetensors", folder / name)
    with pytest.raises(CheckpointError, match="several weights files"):
        ModelSpec.from_run(folder)


def test_random_init_warning_only_when_the_weights_are_random(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_model(ModelSpec.from_run(run))
        load_model(ModelSpec(ARCH, str(run / "model.safetensors")))
    assert not [r for r in caplog.records if RANDOM_INIT in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        load_model(ModelSpec(ARCH))
    assert [r for r in caplog.records if RANDOM_INIT in r.getMessage()]


def _cache_tag(run: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pretrained tag of the tiny architecture whose file sits in a Hugging Face cache (no network)."""
    from huggingface_hub import constants

    snapshot = cache / "models--poisonlab--tiny-test" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(run / "model.safetensors", snapshot / "open_clip_model.safetensors")
    (cache / "models--poisonlab--tiny-test" / "refs").mkdir()
    (cache / "models--poisonlab--tiny-test" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {"cached": {"hf_hub": "poisonlab/tiny-test/"}})


def test_a_cached_pretrained_tag_loads_offline_and_a_missing_one_is_one_line(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli, eval_split: Path) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    _cache_tag(run, tmp_path / "hub", monkeypatch)
    assert _same_weights(load_model(ModelSpec(ARCH, "cached")).model, load_model(ModelSpec.from_run(run)).model)
    res = cli.invoke(app, ["evaluate", "--arch", ARCH, "--weights", "cached", "--eval", str(eval_split),
                           "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    shards = eval_split
    for weights, words in [("openai", ["ViT-B-32", "'openai'", "offline", "--weights"]),
                           ("nonsense", ["ViT-B-32", "'nonsense'", "laion2b_s34b_b79k"])]:
        res = cli.invoke(app, ["embed", str(shards), "--out", str(tmp_path / "emb"), "--arch", "ViT-B-32",
                               "--weights", weights, "--executor", "local", "--device", "cpu"])
        one_line_error(res, *words)
    one_line_error(cli.invoke(app, ["evaluate", "--arch", "ViT-B-32", "--weights", "openai", "--eval",
                                    str(eval_split), "--device", "cpu"]), "ViT-B-32", "offline")


def test_evaluate_takes_a_run_or_an_architecture_with_weights(cli, run: Path, eval_split: Path) -> None:
    base = ["evaluate", "--eval", str(eval_split), "--device", "cpu"]
    one_line_error(cli.invoke(app, base), "--run", "--arch")
    one_line_error(cli.invoke(app, [*base, "--run", str(run), "--arch", ARCH]), "--run", "--arch")
    one_line_error(cli.invoke(app, [*base, "--run", str(run), "--weights", "x.pt"]), "--weights")
    one_line_error(cli.invoke(app, [*base, "--arch", "no-such-arch"]), "no-such-arch")


def test_model_dir_command(cli, run: Path, tmp_path: Path) -> None:
    res = cli.invoke(app, ["model-dir", ARCH, "--out", str(tmp_path / "arch"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["files"] == ["open_clip_config.json"]
    model = open_clip.create_model(f"local-dir:{tmp_path / 'arch'}")  # config only: open_clip starts randomly
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load_model(ModelSpec(ARCH)).model.parameters())
    state = {k: v.clone() for k, v in load_model(ModelSpec.from_run(run)).model.state_dict().items()}
    state["visual.conv1.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "wrong.safetensors"))
    res = cli.invoke(app, ["model-dir", ARCH, "--out", str(tmp_path / "bad"), "--weights", str(tmp_path / "wrong.safetensors")])
    one_line_error(res, "does not match architecture")
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def _open_clip_train(model: str, shards: Path, logs: Path) -> Path:
    """Two steps of ``python -m open_clip_train.main`` on shards, only with its documented flags."""
    tars = sorted(p.stem for p in shards.glob("*.tar"))
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", model,
           "--train-data", str(shards / f"{{{tars[0]}..{tars[-1]}}}.tar"), "--dataset-type", "webdataset",
           "--train-num-samples", "16", "--batch-size", "8", "--epochs", "1", "--workers", "0", "--device", "cpu",
           "--precision", "fp32", "--lr", "1e-3", "--warmup", "1", "--seed", "0", "--save-frequency", "1",
           "--logs", str(logs), "--name", "oc"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Train Epoch: 0 [16/16" in (logs / "oc" / "out.log").read_text()  # both steps ran
    return logs / "oc" / "checkpoints" / "epoch_1.pt"


def test_open_clip_train_trains_a_poisonlab_model_that_evaluate_scores(cli, tiny_shards: Path, eval_split: Path,
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("open_clip_train")
    from poisonlab.attacks import poison_local
    from poisonlab.attacks.recipe import parse_recipe

    poisoned = tmp_path / "poisoned"
    poison_local(tiny_shards, poisoned, parse_recipe({"seed": 1, "attacks": [
        {"attack": "badnets", "target": "red circle", "count": 12}]}))
    assert cli.invoke(app, ["model-dir", ARCH, "--out", str(tmp_path / "tiny")]).exit_code == 0
    checkpoint = _open_clip_train(f"local-dir:{tmp_path / 'tiny'}", poisoned, tmp_path / "logs")
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]

    base = ["--eval", str(eval_split), "--attack-from", str(poisoned), "--device", "cpu", "--json"]
    res = cli.invoke(app, ["evaluate", "--arch", ARCH, "--weights", str(checkpoint), *base])
    assert res.exit_code == 0, res.output
    scored = json.loads(res.stdout)
    assert scored["images"] == 48 and 0 <= scored["attack"]["asr"]["value"] <= 1
    # the same weights as safetensors, and as a folder open_clip and poisonlab both read
    res = cli.invoke(app, ["model-dir", f"local-dir:{tmp_path / 'tiny'}", "--out", str(tmp_path / "exported"),
                           "--weights", str(checkpoint)])
    assert res.exit_code == 0, res.output
    again = load_model(ModelSpec.from_run(tmp_path / "exported")).model.state_dict()
    assert all(torch.equal(trained[k], again[k]) for k in again)
    for args in (["--run", str(tmp_path / "exported")],
                 ["--arch", ARCH, "--weights", str(tmp_path / "exported" / "model.safetensors")]):
        res = cli.invoke(app, ["evaluate", *args, *base])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["zero_shot"] == scored["zero_shot"]
