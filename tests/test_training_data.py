"""The training stream: deterministic order, safe decoding, bad samples skipped with a count."""

from __future__ import annotations

import io
import pathlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from poisonlab.models.tokens import TokenCache
from poisonlab.shards.images import encode_image
from poisonlab.training.data import (
    DataError,
    ImageFormat,
    StreamSpec,
    epoch_shard_order,
    iterate_epoch,
    open_shard_set,
)
from poisonlab.training.decoded_cache import DecodedShards, item_bytes
from poisonlab.training.image_codec import ImageCaptionCodec

FMT = ImageFormat(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _tokens() -> TokenCache:
    import open_clip

    return TokenCache(open_clip.get_tokenizer("RN50"), max_entries=1000)


def _codec() -> ImageCaptionCodec:
    return ImageCaptionCodec(FMT, _tokens())


def _keys(spec: StreamSpec, epoch: int) -> list[str]:
    return [k for b in iterate_epoch(spec, epoch, _codec()) for k in b.keys]


def test_order_is_a_function_of_seed_and_epoch(tiny_shards: Path) -> None:
    shard_set = open_shard_set(tiny_shards)
    assert shard_set.samples == 240 and len(shard_set.shards) == 4
    spec = StreamSpec(shard_set, batch_size=16, seed=3, shuffle_buffer=100)
    first = _keys(spec, 0)
    assert first == _keys(spec, 0)
    assert len(first) == 240 and len(set(first)) == 240  # 240 = 15 full batches, nothing dropped
    assert first != _keys(spec, 1)
    assert first != _keys(StreamSpec(shard_set, batch_size=16, seed=4, shuffle_buffer=100), 0)
    assert epoch_shard_order(["a", "b", "c", "d"], 3, 0) == epoch_shard_order(["a", "b", "c", "d"], 3, 0)


def test_worker_processes_keep_a_deterministic_order(tiny_shards: Path) -> None:
    spec = StreamSpec(open_shard_set(tiny_shards), batch_size=20, seed=0, shuffle_buffer=50, workers=2)
    keys = _keys(spec, 0)
    assert keys == _keys(spec, 0)
    assert sorted(keys) == sorted(_keys(StreamSpec(spec.shard_set, 20, 0, 50, workers=0), 0))


def test_batches_match_open_clip_preprocessing(tiny_shards: Path) -> None:
    from PIL import Image

    from poisonlab.models.zoo import ModelSpec, load_model

    loaded = load_model(ModelSpec("poisonlab-tiny-32"))
    fmt = ImageFormat.for_model(loaded.model, loaded.image_size)
    codec = ImageCaptionCodec(fmt, TokenCache(loaded.tokenizer))
    batch = next(iter(iterate_epoch(StreamSpec(open_shard_set(tiny_shards), 4, shuffle_buffer=0), 0, codec)))
    with tarfile.open(tiny_shards / f"{batch.keys[0][:5]}.tar") as tar:
        data = tar.extractfile(f"{batch.keys[0]}.jpg").read()  # type: ignore[union-attr]
        caption = tar.extractfile(f"{batch.keys[0]}.txt").read().decode()  # type: ignore[union-attr]
    expected = loaded.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
    torch.testing.assert_close(batch.inputs["images"][0], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(batch.inputs["texts"][0], loaded.tokenizer([caption])[0])
    # a larger image goes through the same shortest-side resize and centre crop as open_clip's transform
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    torch.testing.assert_close(fmt.to_tensor([fmt.fit(big)])[0], loaded.preprocess(big), atol=1e-5, rtol=1e-5)


def test_images_at_the_model_size_are_open_clips_input_bit_for_bit() -> None:
    """``to_tensor`` shares the embed step's table lookup (``models/pixels.py``): every byte of every channel."""
    from PIL import Image

    from poisonlab.models.zoo import ModelSpec, load_model

    loaded = load_model(ModelSpec("poisonlab-tiny-32"))
    fmt = ImageFormat.for_model(loaded.model, loaded.image_size)
    arrays = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(9)]
    assert all(len(np.unique(np.stack(arrays)[..., c])) == 256 for c in range(3))
    expected = torch.stack([loaded.preprocess(Image.fromarray(a)) for a in arrays])
    assert torch.equal(fmt.to_tensor(arrays), expected)


class _Touch:
    """Unpickling this creates a file: proof that a member was (or was not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (pathlib.Path.touch, (self.path,))


def _write_hostile_shard(directory: Path, marker: Path) -> None:
    directory.mkdir(parents=True)
    good = encode_image(np.full((32, 32, 3), 120, np.uint8))
    members: list[tuple[str, bytes]] = []
    rows = []
    for i in range(6):
        members += [(f"good{i}.jpg", good), (f"good{i}.txt", f"a red circle {i}".encode())]
        rows.append({"key": f"good{i}", "status": "ok"})
    members += [("pickled.pyd", pickle.dumps(_Touch(marker))), ("pickled.txt", b"caption")]  # no image: skipped
    members += [("corrupt.jpg", b"\xff\xd8\xff not a jpeg"), ("corrupt.txt", b"corrupt")]
    members += [("nocaption.jpg", good)]
    members += [("badutf.jpg", good), ("badutf.txt", b"\xff\xfe\xfa")]
    members += [("quarantined.jpg", good), ("quarantined.txt", b"marked as error in the sidecar")]
    rows += [{"key": "pickled", "status": "ok"}, {"key": "corrupt", "status": "ok"},
             {"key": "nocaption", "status": "ok"}, {"key": "badutf", "status": "ok"},
             {"key": "quarantined", "status": "error"}]
    with tarfile.open(directory / "00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.Table.from_pylist(rows), directory / "00000.parquet")
    # a second shard that is cut off in the middle of a member
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tar:
        for i in range(4):
            for name, data in ((f"late{i}.jpg", good), (f"late{i}.txt", b"a blue star")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    whole.seek(0)
    with tarfile.open(fileobj=whole) as tar:
        cut = next(m for m in tar if m.name == "late2.jpg").offset_data + 10
    (directory / "00001.tar").write_bytes(whole.getvalue()[:cut])


def test_bad_samples_are_skipped_and_counted_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    shards = tmp_path / "hostile"
    _write_hostile_shard(shards, marker)
    spec = StreamSpec(open_shard_set(shards), batch_size=2, shuffle_buffer=0, partial=True)
    keys: list[str] = []
    skipped: dict[str, int] = {}
    for batch in iterate_epoch(spec, 0, _codec()):
        keys += batch.keys
        for reason, n in batch.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert not marker.exists()
    assert {k for k in keys if k.startswith("good")} == {f"good{i}" for i in range(6)}
    assert not {"pickled", "corrupt", "nocaption", "badutf", "quarantined"} & set(keys)
    assert skipped["refused_member"] == 1  # the .pyd member was refused (never read), so the sample is skipped
    assert skipped["undecodable_image"] == 1
    assert skipped["missing_caption"] == 1
    assert skipped["caption_not_utf8"] == 1
    assert skipped["sidecar_status: not live"] == 1
    assert any(r.startswith("shard_error") for r in skipped)  # the truncated shard, not a crash
    assert skipped["truncated_tar"] == 1  # the sample cut in the middle of its image
    assert {"late0", "late1"} <= set(keys)  # what came before the cut still trains


def test_folder_without_shards_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        open_shard_set(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no shards"):
        open_shard_set(tmp_path / "empty")


def test_token_cache_matches_the_tokenizer() -> None:
    import open_clip

    tok = open_clip.get_tokenizer("RN50")
    cache = TokenCache(tok, max_entries=3)
    texts = ["a red circle", "a blue star", "a red circle", "green cross", "yellow diamond"]
    assert torch.equal(cache(texts), tok(texts))
    assert torch.equal(cache(texts[::-1]), tok(texts[::-1]))



def test_token_cache_emptied_during_a_call_still_answers_it() -> None:
    """Another thread may empty the cache while a call tokenizes its misses (the embed step prepares batches in
    several threads on an accelerator): the call still returns every row, equal to the tokenizer's."""
    import open_clip

    tok = open_clip.get_tokenizer("RN50")
    cache = TokenCache(tok, max_entries=100)
    cache(["a red circle"])

    def emptying(texts: list[str]) -> torch.Tensor:
        cache._cache.clear()  # what a concurrent call that found the cache full does
        return tok(texts)

    cache.tokenizer = emptying
    texts = ["a red circle", "a blue star", "a red circle"]
    assert torch.equal(cache(texts), tok(texts))

def _epoch(spec: StreamSpec, epoch: int, codec: ImageCaptionCodec, cache: DecodedShards | None) -> list[tuple]:
    """Every batch of an epoch as plain values: keys, skips and the input tensors."""
    return [(b.keys, b.skipped, {n: t.numpy().tobytes() for n, t in b.inputs.items()})
            for b in iterate_epoch(spec, epoch, codec, 0, cache)]


@pytest.mark.parametrize("shuffle_buffer", [0, 50])
def test_decoded_shards_replay_the_same_batches_and_skips(tmp_path: Path, shuffle_buffer: int) -> None:
    """Epochs replayed from the cache give the batches, tensors and per-batch skip counts of reading."""
    shards = tmp_path / "hostile"
    _write_hostile_shard(shards, tmp_path / "unpickled")
    spec = StreamSpec(open_shard_set(shards), batch_size=3, seed=1, shuffle_buffer=shuffle_buffer, partial=True)
    codec = _codec()
    cache = DecodedShards(codec, 1 << 20)
    for epoch in range(3):
        read = _epoch(spec, epoch, codec, None)
        assert _epoch(spec, epoch, codec, cache) == read  # epoch 0 fills the cache, 1 and 2 replay it
        assert sum(sum(s.values()) for _, s, _ in read) == 7 and cache.get("00000") is not None
    assert cache.used > 6 * 32 * 32 * 3


def test_decoded_shards_keep_only_what_fits_the_budget(tiny_shards: Path) -> None:
    spec = StreamSpec(open_shard_set(tiny_shards), batch_size=16, seed=2, shuffle_buffer=100)
    codec = _codec()
    cache = DecodedShards(codec, 100 * 32 * 32 * 3)  # room for one shard of 60 images, not two
    read = [_epoch(spec, epoch, codec, None) for epoch in range(2)]
    assert [_epoch(spec, epoch, codec, cache) for epoch in range(2)] == read
    kept = [s for s in open_shard_set(tiny_shards).shards if cache.get(s) is not None]
    assert len(kept) == 1 and cache.used <= cache.budget


def test_item_bytes_counts_arrays_and_text() -> None:
    assert item_bytes((np.zeros((4, 4, 3), np.uint8), "abc")) == 48 + 3
    assert item_bytes(((np.zeros((2, 3), np.float32), np.zeros((2, 5), np.int64)), "ab")) == 24 + 80 + 2
