"""Training reads shards through the one reader: every image format poisonlab accepts trains."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from poisonlab.shards.images import decode_array, encode_image
from poisonlab.shards.plan import finalize_folder
from poisonlab.shards.reader import read_shard
from poisonlab.shards.writer import ShardWriter
from poisonlab.training import TrainSettings, train_run
from poisonlab.training.data import DataError


def _reencode(src: Path, dst: Path, formats: dict[str, str]) -> int:
    """Copy each shard of ``src`` with its images re-encoded as ``formats[shard]`` (webp, bmp, png)."""
    stats, total = [], 0
    for shard, ext in formats.items():
        with ShardWriter(dst, shard) as writer:
            for sample in read_shard(src, shard):
                image = encode_image(decode_array(sample.payload), ext)
                writer.write(dataclasses.replace(sample, payload=image, payload_ext=ext))
                total += 1
            stats.append(writer.close())
    finalize_folder(dst, stats)
    return total


@pytest.fixture(scope="module")
def mixed_formats(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("formats") / "shards"
    return out, _reencode(tiny_shards, out, {"00000": "webp", "00001": "bmp", "00002": "png"})


def test_webp_bmp_and_png_shards_train_on_every_sample(mixed_formats: tuple[Path, int], tmp_path: Path) -> None:
    shards, total = mixed_formats
    assert {s.payload_ext for shard, ext in (("00000", "webp"), ("00001", "bmp")) for s in read_shard(shards, shard)
            } == {"webp", "bmp"} and total == 180
    settings = TrainSettings(epochs=1, batch_size=20, lr=5e-4, warmup_steps=1, shuffle_buffer=50, workers=0,
                             device="cpu", log_every=1, threads=1)
    result = train_run(shards, tmp_path / "run", settings, progress=False)
    assert result is not None
    assert result.samples == total and result.steps == total // 20  # every sample, in full batches
    assert result.skipped == {}  # no missing_image, missing_payload or undecodable sample
    epochs = pd.read_csv(tmp_path / "run" / "metrics_epochs.csv")
    assert list(epochs["samples"]) == [total] and json.loads(epochs["skipped"].iloc[0]) == {}


def test_a_folder_of_an_unknown_modality_fails_before_training(mixed_formats: tuple[Path, int], tmp_path: Path) -> None:
    shards, _ = mixed_formats
    odd = tmp_path / "odd"
    shutil.copytree(shards, odd)
    (odd / "dataset.json").write_text(json.dumps({"format_version": 1, "modality": "no-such-modality"}))
    with pytest.raises(DataError, match="no-such-modality"):
        train_run(odd, tmp_path / "run", TrainSettings(epochs=1, device="cpu"), progress=False)
    assert not (tmp_path / "run" / "train_state.json").exists()
