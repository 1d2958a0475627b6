"""Embedders and named spaces: a toy embedder registered from outside the package runs embed -> scan ->
recall on poisoned shards; stores of the first format stay readable; a missing space is a one-line error."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import Field
from typer.testing import CliRunner

from poisonlab.attacks import poison_local
from poisonlab.attacks.recipe import parse_recipe
from poisonlab.filters.corpus import load_corpus
from poisonlab.filters.detectors import DETECTORS
from poisonlab.filters.embed import EmbedConfig
from poisonlab.filters.embedders import EMBEDDERS, Decoded, Embedder, known_spaces
from poisonlab.filters.metrics import recall_report
from poisonlab.filters.pipeline import clean_shards, embed_shards
from poisonlab.filters.scan import scan
from poisonlab.filters.scores import load_scores
from poisonlab.filters.store import (
    MissingSpaceError,
    StoreFormatError,
    pack_strings,
    read_info,
    read_shard_embeddings,
    source_digest,
)
from poisonlab.pipelines.registry import Params, RegistryError
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import MODALITIES, Modality, write_dataset_record
from poisonlab.shards.images import IMAGE_EXTENSIONS, ImageError, decode_image
from poisonlab.shards.layout import list_shards

# --- a toy embedder, registered the way a plugin would: through the registry API, from outside poisonlab ----


class ToyParams(Params):
    dim: int = Field(16, ge=2, description="output dimensions")
    seed: int = Field(0, description="seed of the random projections")
    side: int = Field(8, ge=2, description="images are reduced to side x side before projecting")


class ToyProjection(Embedder):
    """Pixels (reduced to side x side) and caption byte histograms, each through a fixed random projection."""

    spaces = ("pixels", "caption_bytes")
    payload_extensions = IMAGE_EXTENSIONS
    params: ToyParams

    def setup(self) -> None:
        rng = np.random.default_rng(self.params.seed)
        p = self.params
        self.projections = {"pixels": rng.standard_normal((p.side * p.side * 3, p.dim)).astype(np.float32),
                            "caption_bytes": rng.standard_normal((256, p.dim)).astype(np.float32)}

    def dims(self) -> dict[str, int]:
        return {space: self.params.dim for space in self.spaces}

    def decode(self, sample: Sample) -> Decoded:
        out = Decoded({})
        if sample.payload is None or not self.accepts(sample.payload_ext):
            out.missing.append(f"no_pixels: payload .{sample.payload_ext}")
        else:
            try:
                image = decode_image(sample.payload).resize((self.params.side, self.params.side), Image.Resampling.BILINEAR)
                out.inputs["pixels"] = np.asarray(image, np.float32).ravel() / 255.0 - 0.5
            except ImageError as exc:
                out.missing.append(str(exc))
        if sample.text:
            out.inputs["caption_bytes"] = np.bincount(np.frombuffer(sample.text.encode(), np.uint8), minlength=256)
        else:
            out.missing.append("no_caption")
        return out

    def embed(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        out = {}
        for space, inputs in batch.items():
            x = np.stack(inputs).astype(np.float32) @ self.projections[space]
            out[space] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    def identity(self) -> dict[str, Any]:
        return self.params.model_dump()

    def label(self) -> str:
        return "toy"


def blob_modality(params: Params) -> Modality:
    return Modality("toy_blob", frozenset({"blob"}), require_text=False, probe_images=False)


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """Register the toy embedder and a test modality through the registry API, and only for this module
    (another module may list every registered component)."""
    EMBEDDERS.register("toy_projection", ToyParams, summary="a fixed random projection of pixels and caption bytes")(
        ToyProjection)
    MODALITIES.register("toy_blob", summary="opaque blobs (a test modality)")(blob_modality)
    yield
    EMBEDDERS._items.pop("toy_projection")  # no public unregister: registrations are meant to be permanent
    MODALITIES._items.pop("toy_blob")


RECIPE = {"seed": 3, "attacks": [{"attack": "badnets", "target": "red circle", "count": 12,
                                  "params": {"pattern": "solid", "size_frac": 0.25, "templates": ["a photo of a {}."]}}]}
TOY_DETECTORS = {"kdist_pixels": {"detector": "kdist", "k": 8, "space": "pixels", "index": {"kind": "exact"}},
                 "kdist_captions": {"detector": "kdist", "k": 8, "space": "caption_bytes"},
                 "dups": {"detector": "image_duplicates", "space": "pixels", "threshold": 0.999},
                 "caption_frequency": {"near_duplicate": None}}


@pytest.fixture(scope="module")
def poisoned(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "poisoned"
    assert poison_local(tiny_shards, out, parse_recipe(RECIPE))["poisoned"] == 12
    return out


@pytest.fixture(scope="module")
def toy_store(poisoned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = embed_shards(poisoned, tmp_path_factory.mktemp("toy-emb"), EmbedConfig(embedder="toy_projection:dim=24"))
    return Path(result["store"])


def test_toy_embedder_runs_embed_scan_recall_on_poisoned_shards(poisoned: Path, toy_store: Path, tmp_path: Path) -> None:
    info = json.loads((toy_store / "model.json").read_text())
    assert info["embedder"] == "toy_projection" and info["spaces"] == {"pixels": 24, "caption_bytes": 24}
    assert info["identity"] == {"dim": 24, "seed": 0, "side": 8} and toy_store.name.startswith("toy-")
    part = read_shard_embeddings(toy_store, "00000")
    assert set(part.vectors) == {"pixels", "caption_bytes"} and part.vectors["pixels"].shape[1] == 24
    np.testing.assert_allclose(np.linalg.norm(part.vectors["pixels"][part.ok["pixels"]], axis=1), 1.0, rtol=1e-5)

    summary = scan(toy_store, TOY_DETECTORS, tmp_path / "scores")
    assert summary["columns"] == list(TOY_DETECTORS)
    table = pq.read_table(tmp_path / "scores" / "00000.parquet")
    assert {"embedded_pixels", "embedded_caption_bytes"} <= set(table.column_names)
    scores = load_scores(tmp_path / "scores")
    assert set(scores.columns) == set(TOY_DETECTORS)  # the embedded_* flags are not score columns

    report = recall_report(tmp_path / "scores", poisoned / "_run" / "manifest.parquet", out=tmp_path / "recall")
    assert report["positives"] == 12 and report["attacks"] == {"badnets": 12} and report["missing_positives"] == 0
    for name in TOY_DETECTORS:
        metrics = report["detectors"][name]["all"]
        assert 0.0 <= metrics["auroc"] <= 1.0 and metrics["positives"] == 12
    # every badnets caption here is the one template naming the target: repeated captions stand out
    assert report["detectors"]["caption_frequency"]["all"]["auroc"] > 0.9
    assert (tmp_path / "recall" / "recall.md").read_text().count("| kdist_pixels |") == 1

    cleaned = clean_shards(poisoned, tmp_path / "scores", "top_fraction:detector=caption_frequency,fraction=0.1",
                           tmp_path / "clean")
    assert cleaned["excluded"] == 24


def test_embedder_runs_are_reproducible_and_resumable(poisoned: Path, toy_store: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in toy_store.glob("*.npz")}
    again = embed_shards(poisoned, toy_store.parent, EmbedConfig(embedder="toy_projection:dim=24", batch_size=7))
    assert again["store"] == str(toy_store) and {p.name: p.stat().st_mtime_ns for p in toy_store.glob("*.npz")} == before
    assert read_info(toy_store).settings == {}, "a row-by-row projection: batching changes none of its floats"
    other = embed_shards(poisoned, toy_store.parent, EmbedConfig(embedder="toy_projection:dim=24,seed=1"))
    assert other["store"] != str(toy_store), "another identity is another store"


def test_a_detector_on_a_space_the_store_lacks_is_a_one_line_error(toy_store: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingSpaceError) as caught:
        scan(toy_store, ["clip_score"], tmp_path / "s")
    message = str(caught.value)
    # clip_score reads the payload's own space (here the toy embedder's first, pixels) and text, which is missing
    assert "'clip_score'" in message and "'text'" in message and "caption_bytes, pixels" in message
    assert "Embed with an embedder that produces 'text'" in message and "\n" not in message
    assert not (tmp_path / "s").exists(), "refused before any work"
    with pytest.raises(MissingSpaceError, match="'text'"):
        scan(toy_store, {"k": {"detector": "kdist", "space": "text"}}, tmp_path / "s")
    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        import_module(name)
    res = CliRunner().invoke(app, ["scan", str(toy_store), "--out", str(tmp_path / "cli"), "--detector", "clip_score"])
    assert res.exit_code == 2 and "does not hold" in res.output and "Traceback" not in res.output


def test_detector_spaces_are_checked_against_registered_embedders() -> None:
    assert {"image", "text", "pixels", "caption_bytes"} <= known_spaces()
    assert DETECTORS.create("kdist", {"space": "pixels"}).reads() == ("pixels",)
    assert DETECTORS.create("kdist", {"space": "cross"}).reads() == ("sample", "text")
    assert DETECTORS.create("clip_score").reads() == ("sample", "text")
    assert DETECTORS.create("spectral", {"space": "concat"}).reads() == ("sample", "text")
    assert DETECTORS.create("hash_mismatch").reads() == ()
    with pytest.raises(RegistryError, match="unknown space"):
        DETECTORS.create("isolation_forest", {"space": "audio"})


def test_embedders_are_listed_and_bad_specs_refused(poisoned: Path, tmp_path: Path) -> None:
    assert {"open_clip", "toy_projection"} <= set(EMBEDDERS.names())
    with pytest.raises(RegistryError, match="unknown embedder"):
        embed_shards(poisoned, tmp_path / "e", EmbedConfig(embedder="no_such_embedder"))
    with pytest.raises(RegistryError, match="unknown parameter"):
        embed_shards(poisoned, tmp_path / "e", EmbedConfig(embedder="toy_projection:width=3"))


def test_embed_asks_the_folder_modality_and_the_embedder_what_they_read(poisoned: Path, tmp_path: Path) -> None:
    folder = tmp_path / "blobs"
    shutil.copytree(poisoned, folder)
    write_dataset_record(folder, "toy_blob")
    with pytest.raises(ValueError, match=r"reads .*jpg.* payloads but .* holds blob; choose another --embedder"):
        embed_shards(folder, tmp_path / "e", EmbedConfig(embedder="toy_projection"))
    assert not (tmp_path / "e").exists()


# --- stores written before embedders were registered (format 1) -------------------------------------------


def write_format1_store(store: Path, source: Path, dim: int = 8) -> list[str]:
    """A store exactly as the first format wrote it: fixed image/text arrays, embed_dim in model.json."""
    store.mkdir(parents=True)
    (store / "model.json").write_text(json.dumps({
        "model_id": "poisonlab-tiny-32-0123456789ab", "arch": "poisonlab-tiny-32", "weights": None,
        "weights_digest": "random:0", "embed_dim": dim, "image_size": 32, "context_length": 32, "dtype": "float32",
        "source": str(source.resolve()), "version": 1, "normalised": True}))
    rng = np.random.default_rng(0)
    all_keys = []
    for shard in list_shards(source):
        keys = [f"{shard}{i:04d}" for i in range(30)]
        all_keys += keys
        image, text = rng.standard_normal((2, 30, dim)).astype(np.float32)
        arrays = {"image": image / np.linalg.norm(image, axis=1, keepdims=True),
                  "text": text / np.linalg.norm(text, axis=1, keepdims=True),
                  "image_ok": np.ones(30, bool), "text_ok": np.ones(30, bool), "live": np.ones(30, bool),
                  "digest": np.frombuffer(source_digest(source, shard).encode(), np.uint8).copy(),
                  "version": np.array([1], np.int64)}
        for name, values in (("keys", keys), ("captions", [f"caption {k}" for k in keys]), ("status", ["ok"] * 30),
                             ("reasons", [""] * 30), ("source_status", [""] * 30), ("hash_status", [""] * 30)):
            arrays[f"{name}_bytes"], arrays[f"{name}_ends"] = pack_strings(values)
        np.savez(store / f"{shard}.npz", **arrays)
    return all_keys


def test_a_store_of_the_first_format_is_still_read_and_scanned(tiny_shards: Path, tmp_path: Path) -> None:
    keys = write_format1_store(tmp_path / "old", tiny_shards)
    info = read_info(tmp_path / "old")
    assert info.embedder == "open_clip" and info.spaces == {"image": 8, "text": 8}
    corpus = load_corpus(tmp_path / "old")
    assert corpus.keys == keys and corpus.model().spaces == ["image", "text"]
    summary = scan(tmp_path / "old", {"kdist": {"k": 4}, "clip_score": {}}, tmp_path / "scores")
    assert summary["samples"] == len(keys)
    table = load_scores(tmp_path / "scores")
    assert np.isfinite(table.column("kdist")).all() and np.isfinite(table.column("clip_score")).all()


def test_a_store_of_an_unknown_format_says_to_re_embed(tiny_shards: Path, tmp_path: Path) -> None:
    write_format1_store(tmp_path / "future", tiny_shards)
    record = json.loads((tmp_path / "future" / "model.json").read_text())
    (tmp_path / "future" / "model.json").write_text(json.dumps({**record, "version": 99}))
    with pytest.raises(StoreFormatError, match="re-embed the shards"):
        load_corpus(tmp_path / "future")
    write_format1_store(tmp_path / "broken", tiny_shards)
    with np.load(tmp_path / "broken" / "00000.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "text"}
    np.savez(tmp_path / "broken" / "00000.npz", **arrays)
    with pytest.raises(StoreFormatError, match="re-embed the shards"):
        load_corpus(tmp_path / "broken")


def test_cli_embed_takes_an_embedder_by_name(poisoned: Path, tmp_path: Path) -> None:
    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        import_module(name)
    cli = CliRunner()
    res = cli.invoke(app, ["embed", str(poisoned), "--out", str(tmp_path / "emb"), "--embedder", "toy_projection:dim=8",
                           "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    store = json.loads(res.stdout)["store"]
    assert read_info(Path(store)).spaces == {"pixels": 8, "caption_bytes": 8}
    res = cli.invoke(app, ["scan", store, "--out", str(tmp_path / "scores"), "--detector", "kdist:k=4,space=pixels", "--json"])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["embed", str(poisoned), "--out", str(tmp_path / "e2"), "--executor", "local"])
    assert res.exit_code == 2 and "give --arch" in res.output
