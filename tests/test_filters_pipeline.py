"""Embed -> scan -> clean -> recall on real shards with the tiny open_clip model, and the bad inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from contextlib import AbstractContextManager
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_synth
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from poisonlab.filters.corpus import load_corpus
from poisonlab.filters.embed import EmbedConfig, cached_embedder
from poisonlab.filters.pipeline import clean_shards, embed_shards
from poisonlab.filters.scan import scan
from poisonlab.filters.scores import load_scores
from poisonlab.filters.store import (
    EmbeddingMismatchError,
    MissingSpaceError,
    read_info,
    read_shard_embeddings,
    shard_file,
    write_shard,
)
from poisonlab.flows.runtime import RunnerSpec
from poisonlab.models.zoo import CheckpointError, ModelSpec
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.fingerprint import DatasetMismatchError
from poisonlab.shards.images import encode_image
from poisonlab.shards.reader import read_shard
from poisonlab.shards.writer import ShardWriter

TINY = ModelSpec("poisonlab-tiny-32")
BROKEN_KEY = "000030099"
DETECTORS = {"kdist": {"k": 8}, "dao": {"k": 8}, "clip_score": {}, "caption_frequency": {}}
LOCAL = RunnerSpec(executor="local", progress=False)


def add_broken_shard(directory: Path) -> None:
    """A fourth shard whose last image has a valid header but a truncated body (decodes only partly)."""
    pixels = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    good = encode_image(pixels, "jpg")
    with ShardWriter(directory, "00003") as writer:
        for i in range(10):
            writer.write(Sample(key=f"00003{i:04d}", payload=good, text=f"a test pattern {i}", meta={}))
        writer.write(Sample(key=BROKEN_KEY, payload=good[: 2 * len(good) // 3], text="a broken image", meta={}))
        writer.close()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = make_synth(tmp_path_factory.mktemp("filters") / "shards", samples=180, per_shard=60)
    add_broken_shard(out)
    return out


@pytest.fixture(scope="module")
def store(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = embed_shards(shards, tmp_path_factory.mktemp("emb"), EmbedConfig(TINY, batch_size=64))
    assert result["samples"] == 191 and result["written"] == 190
    return Path(result["store"])


@pytest.fixture(scope="module")
def scores(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scores")
    scan(store, DETECTORS, out)
    return out


def tar_members(path: Path) -> dict[str, bytes]:
    """Raw member bytes (read as bytes, never decoded or unpickled)."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_store_holds_every_sample_with_a_status(shards: Path, store: Path) -> None:
    info = json.loads((store / "model.json").read_text())
    assert info["embed_dim"] == 128 and info["weights_digest"] == "random:0" and info["source"] == str(shards.resolve())
    corpus = load_corpus(store)
    assert len(corpus) == 191 and corpus.shard_names == ["00000", "00001", "00002", "00003"]
    view = corpus.model()
    assert info["embedder"] == "open_clip" and info["spaces"] == {"image": 128, "text": 128}
    (image, image_ok), (_, text_ok) = view.space("image"), view.space("text")
    broken = corpus.keys.index(BROKEN_KEY)
    assert not image_ok[broken] and text_ok[broken] and corpus.live[broken]
    assert "undecodable_image" in corpus.reasons[broken]
    norms = np.linalg.norm(image[image_ok], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    sidecar_keys = [s.key for shard in corpus.shard_names for s in read_shard(shards, shard)]
    assert corpus.keys == sidecar_keys


def test_a_scan_holds_only_the_spaces_its_detectors_read(store: Path) -> None:
    full = load_corpus(store)
    image_only = load_corpus(store, {"model": {"image"}})
    view = image_only.model()
    assert list(view.vectors) == ["image"] and view.spaces == ["image", "text"]  # every mask, for the tables
    assert np.array_equal(view.space("image")[0], full.model().space("image")[0])
    assert np.array_equal(view.ok["text"], full.model().ok["text"])
    with pytest.raises(MissingSpaceError, match="'text' .* was not loaded: a detector reading it must declare it"):
        view.space("text")


def test_reading_ahead_model_streams_and_input_threads_write_the_same_bytes(shards: Path, store: Path,
                                                                          tmp_path: Path) -> None:
    """The store fixture ran as the in-process runner chooses (one 1-thread model stream per CPU it lends);
    one stream read serially or ahead, three streams, four threads decoding and preparing inputs, and two
    processes decoding with two threads preparing (as on a GPU) change no byte, the truncated image's reason
    included, with batches that end inside a shard (7 rows of 60)."""
    def npz(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.glob("*.npz")}

    ways = {"serial": {"streams": 1, "read_ahead": False}, "ahead": {"streams": 1, "read_ahead": True},
            "three": {"streams": 3}, "inputs": {"streams": 1, "read_ahead": True, "input_threads": 4},
            "processes": {"streams": 1, "read_ahead": True, "input_threads": 2, "input_processes": 2}}
    for name, how in ways.items():
        out = Path(embed_shards(shards, tmp_path / name, EmbedConfig(TINY, batch_size=64, **how))["store"])
        assert npz(out) == npz(store), name
    odd = [npz(Path(embed_shards(shards, tmp_path / f"odd-{name}", EmbedConfig(TINY, batch_size=7, **how))["store"]))
           for name, how in ways.items()]
    assert sorted(odd[0]) == sorted(npz(store))
    assert all(other == odd[0] for other in odd[1:])


def _sink(**how: Any) -> Any:
    from poisonlab.filters.embed import EmbedSink

    return EmbedSink(EmbedConfig(TINY, **how), "store", "src")


def _lending(monkeypatch: pytest.MonkeyPatch, cpus: int) -> AbstractContextManager[None]:
    """The in-process runner's loan on a machine of ``cpus`` CPUs."""
    from poisonlab.pipelines import ordered_jobs

    monkeypatch.setattr(ordered_jobs.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    return ordered_jobs.lend_cpus()


def _on_cuda(monkeypatch: pytest.MonkeyPatch, embedder: Any) -> None:
    monkeypatch.setattr(type(embedder), "device", property(lambda self: "cuda"))


def test_input_threads_feed_an_accelerator_from_the_cpus_the_runner_lends(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = cached_embedder(EmbedConfig(TINY))
    with _lending(monkeypatch, 6):
        assert _sink()._input_threads(embedder) == 1  # on the CPU the model's streams hold the cores
        assert _sink(input_threads=3)._input_threads(embedder) == 3
        _on_cuda(monkeypatch, embedder)
        assert _sink()._input_threads(embedder) == 6
        monkeypatch.setattr(embedder, "concurrent_inputs", False)  # an embedder whose decoding is not thread-safe
        assert _sink(input_threads=3)._input_threads(embedder) == 1
    assert _sink()._input_threads(embedder) == 1
    with pytest.raises(ValueError, match="input_threads .* at least 1"):
        EmbedConfig(TINY, input_threads=0)


def test_input_processes_decode_for_an_accelerator_where_this_process_may_have_children(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from poisonlab.filters import embed as embed_module

    embedder = cached_embedder(EmbedConfig(TINY))
    with _lending(monkeypatch, 16):
        assert _sink()._input_processes(embedder) == 0  # on the CPU the model's streams hold the cores
        assert _sink(input_processes=3)._input_processes(embedder) == 3
        _on_cuda(monkeypatch, embedder)
        assert _sink()._input_processes(embedder) == 8  # one fewer than the 16 lent CPUs, at most 8
        assert _sink(input_processes=0)._input_processes(embedder) == 0
    assert _sink()._input_processes(embedder) == 0  # a Dask worker's share of the CPUs: one
    monkeypatch.setattr(embed_module, "can_start_processes", lambda: False)  # a daemonic process
    assert _sink(input_processes=3)._input_processes(embedder) == 0
    monkeypatch.setattr(embed_module, "can_start_processes", lambda: True)
    monkeypatch.setattr(embedder, "decodes_in_processes", False)  # an embedder whose decode needs its model
    assert _sink(input_processes=3)._input_processes(embedder) == 0
    with pytest.raises(ValueError, match="input_processes .* 0 or more"):
        EmbedConfig(TINY, input_processes=-1)


def test_a_decoding_process_that_dies_fails_the_shard_in_one_line_and_the_next_shard_gets_a_fresh_pool(
        shards: Path) -> None:
    from crashing_embedder import CrashingEmbedder, CrashParams

    from poisonlab.filters.input_processes import InputProcessError, decoded_in_processes

    samples = list(read_shard(shards, "00000"))
    with pytest.raises(InputProcessError, match="a decoding process died .* input_processes=0"):
        list(decoded_in_processes(samples, CrashingEmbedder(CrashParams(crash_key=samples[40].key)), 2, chunk=8))
    decoded = list(decoded_in_processes(samples, CrashingEmbedder(CrashParams()), 2, chunk=8))
    assert [s.key for s, _ in decoded] == [s.key for s in samples]
    assert [d.inputs["size"] for _, d in decoded] == [len(s.payload) for s in samples]  # type: ignore[union-attr]


def test_model_streams_follow_the_cpus_the_runner_lends(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = cached_embedder(EmbedConfig(TINY))
    assert _sink()._streams(embedder) == 1  # not in a runner that lends CPUs: a Dask worker's share
    with _lending(monkeypatch, 4):
        assert _sink()._streams(embedder) == 4
        assert _sink(threads=2)._streams(embedder) == 2
        assert _sink(threads=8)._streams(embedder) == 1
        assert _sink(streams=3)._streams(embedder) == 3
        monkeypatch.setattr(embedder, "concurrent_batches", False)  # an embedder that is not thread-safe
        assert _sink(streams=3)._streams(embedder) == 1
    with pytest.raises(ValueError, match="at least 1"):
        EmbedConfig(TINY, streams=0)


def test_rerun_skips_done_shards_and_random_weights_are_reproducible(shards: Path, store: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("*.npz")}
    again = embed_shards(shards, store.parent, EmbedConfig(TINY, batch_size=64))
    assert again["store"] == str(store)
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("*.npz")} == before
    # a fresh store from the same seed holds the same embeddings, whatever the batch size
    fresh = embed_shards(shards, store.parent.parent / "fresh", EmbedConfig(TINY, batch_size=17, dtype="float16"))
    a, b = read_shard_embeddings(store, "00001"), read_shard_embeddings(Path(fresh["store"]), "00001")
    assert np.load(shard_file(Path(fresh["store"]), "00001"))["emb.image"].dtype == np.float16
    np.testing.assert_allclose(a.vectors["image"], b.vectors["image"], atol=2e-3)
    assert a.keys == b.keys


def test_a_store_keeps_one_set_of_run_settings(shards: Path, store: Path, tmp_path: Path) -> None:
    """Shards a rerun adds are computed as the ones it resumes: other settings are refused before any work."""
    assert read_info(store).settings == {"batch_size": 64, "threads": 1, "device": "cpu", "precision": "fp32",
                                         "compiled": False, "max_pixels": EmbedConfig().max_pixels}
    partial = tmp_path / "emb"
    first = partial / store.name
    first.mkdir(parents=True)
    shutil.copy(store / "model.json", first)
    shutil.copy(shard_file(store, "00000"), first)  # a run that stopped after one shard
    written = shard_file(first, "00000").read_bytes()
    for other, named in ((EmbedConfig(TINY, batch_size=17), "batch_size=64, not 17"),
                         (EmbedConfig(TINY, batch_size=64, threads=2), "threads=1, not 2"),
                         (EmbedConfig(TINY, batch_size=64, precision="bf16"), "precision='fp32', not 'bf16'"),
                         (EmbedConfig(TINY, batch_size=64, embedder="open_clip:compile=true"), "compiled=False, not True")):
        with pytest.raises(EmbeddingMismatchError, match=f"computed with {named}"):
            embed_shards(shards, partial, other)
    assert sorted(p.name for p in first.glob("*.npz")) == ["00000.npz"]  # nothing written by a refused run
    assert read_info(first).settings == read_info(store).settings
    embed_shards(shards, partial, EmbedConfig(TINY, batch_size=64))  # the same settings complete the store
    assert shard_file(first, "00000").read_bytes() == written
    for shard in ("00001", "00002", "00003"):
        assert shard_file(first, shard).read_bytes() == shard_file(store, shard).read_bytes()


def test_pixels_looked_up_where_the_model_runs_give_the_same_store(shards: Path, store: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator's input path (the batch's bytes, looked up on the model's device), run on the CPU."""
    from poisonlab.models.pixels import ImageBytes

    embedder = cached_embedder(EmbedConfig(TINY, batch_size=64))
    monkeypatch.setattr(embedder, "_lookup_on_device", True)
    looked_up = []
    lookup = ImageBytes.to
    monkeypatch.setattr(ImageBytes, "to", lambda self, device: looked_up.append(len(self.stacked)) or lookup(self, device))
    other = Path(embed_shards(shards, tmp_path, EmbedConfig(TINY, batch_size=64))["store"])
    assert sum(looked_up) == 190, "every decoded image went through the device-side lookup"
    for shard in ("00000", "00001", "00002", "00003"):
        assert shard_file(other, shard).read_bytes() == shard_file(store, shard).read_bytes()


def test_a_store_without_recorded_settings_is_resumed_and_given_none(shards: Path, store: Path, tmp_path: Path) -> None:
    """A store written before settings were kept: nothing to compare against, and nothing claimed for it."""
    first = tmp_path / store.name
    first.mkdir()
    shutil.copy(shard_file(store, "00000"), first)
    record = json.loads((store / "model.json").read_text())
    del record["settings"]
    (first / "model.json").write_text(json.dumps(record))
    assert embed_shards(shards, tmp_path, EmbedConfig(TINY, batch_size=32))["store"] == str(first)
    assert read_info(first).settings == {} and "settings" not in json.loads((first / "model.json").read_text())


def test_clean_keeps_samples_byte_identical_and_accounts_for_everything(shards: Path, scores: Path,
                                                                         tmp_path: Path) -> None:
    out, excluded = tmp_path / "clean", tmp_path / "excluded"
    report = clean_shards(shards, scores, "top_fraction:detector=kdist,fraction=0.05", out, excluded_out=excluded)
    table = load_scores(scores)
    exclusions = pq.read_table(out / "_run" / "exclusions.parquet")
    rules = exclusions.column("rule").to_pylist()
    assert rules.count("no_score") == 1 and rules.count("kdist top 0.05") == 10  # ceil(5% of 191 live)
    assert report["excluded"] == 11 and report["by_rule"] == {"kdist top 0.05": 10, "no_score": 1}
    dropped_keys = set(exclusions.column("key").to_pylist())
    assert BROKEN_KEY in dropped_keys
    kept_rows, all_rows = 0, 0
    for shard in ("00000", "00001", "00002", "00003"):
        source, cleaned = tar_members(shards / f"{shard}.tar"), tar_members(out / f"{shard}.tar")
        for name, data in cleaned.items():  # every kept member is the source's, byte for byte
            assert source[name] == data
        assert {n.split(".")[0] for n in source} - {n.split(".")[0] for n in cleaned} == {
            k for k in dropped_keys if k.startswith(shard)}
        side = pq.read_table(out / f"{shard}.parquet").to_pylist()
        all_rows += len(side)
        kept_rows += sum(r["status"] == "ok" for r in side)
        for row in side:
            if row["key"] in dropped_keys:
                assert row["status"] == "dropped" and row["reason"].startswith("sanitize: ")
        inspect = tar_members(excluded / f"{shard}.tar")
        for name, data in inspect.items():
            if not name.endswith(".json"):
                assert source[name] == data
    assert all_rows == len(table) == 191 and kept_rows == 180
    assert json.loads((out / "sizes.json").read_text())["00003.tar"] == 10
    assert json.loads((out / "clean.json").read_text())["excluded"] == 11


def test_missing_scores_can_be_kept_by_an_explicit_rule(shards: Path, scores: Path, tmp_path: Path) -> None:
    report = clean_shards(shards, scores, {"name": "threshold", "detector": "clip_score", "value": 10.0,
                                           "missing": "keep"}, tmp_path / "clean")
    assert report["excluded"] == 0
    assert f"{BROKEN_KEY}.jpg" in tar_members(tmp_path / "clean" / "00003.tar")


def test_rethresholding_reads_scores_and_never_recomputes(shards: Path, scores: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in scores.iterdir()}
    a = clean_shards(shards, scores, "threshold:detector=dao,value=0.5", tmp_path / "a")
    b = clean_shards(shards, scores, {"name": "rules", "rules": [{"detector": "dao", "threshold": 0.5},
                                                                  {"detector": "kdist", "top_fraction": 0.02}]},
                     tmp_path / "b")
    assert a["excluded"] <= b["excluded"]
    assert {p.name: p.stat().st_mtime_ns for p in scores.iterdir()} == before
    with pytest.raises(FileExistsError, match="another decision"):
        clean_shards(shards, scores, "threshold:detector=dao,value=0.1", tmp_path / "a")
    with pytest.raises(FileExistsError, match="no clean wrote"):
        clean_shards(shards, scores, "threshold:detector=dao,value=0.1", make_synth(tmp_path / "other", samples=60))


def test_recall_report_matches_sklearn_and_writes_curves(scores: Path, tmp_path: Path) -> None:
    from poisonlab.filters.metrics import recall_report

    table = load_scores(scores)
    live_keys = [k for k, live in zip(table.keys, table.live, strict=True) if live]
    positives = live_keys[::19]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"key": positives, "attack": ["a", "b"] * (len(positives) // 2) + ["a"] * (len(positives) % 2)}),
                   manifest)
    report = recall_report(scores, manifest, out=tmp_path / "recall")
    labels = np.array([k in set(positives) for k in live_keys])
    kdist = table.column("kdist")[table.live]
    kdist = np.where(np.isnan(kdist), np.nanmin(kdist) - 1, kdist)  # the broken image has no score: ranked last
    assert report["detectors"]["kdist"]["all"]["auroc"] == pytest.approx(roc_auc_score(labels, kdist))
    assert set(report["detectors"]["kdist"]["per_attack"]) == {"a", "b"}
    budget = report["detectors"]["kdist"]["all"]["budgets"]["5%"]
    top = np.argsort(-kdist, kind="stable")[: budget["removed"]]
    assert budget["recall"] == pytest.approx(labels[top].sum() / labels.sum())
    for name in ("roc.png", "pr.png", "roc_a.png", "recall.md", "recall.json"):
        assert (tmp_path / "recall" / name).stat().st_size > 0
    assert "| kdist |" in (tmp_path / "recall" / "recall.md").read_text()


# --- bad input ----------------------------------------------------------------------------------------------


class NotAWeight:
    pass


def test_checkpoints_that_are_not_safetensors_or_weights_only_are_refused(shards: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save({"visual.proj": NotAWeight()}, pickled)  # needs full unpickling: refused by weights_only
    other = tmp_path / "model.pkl"
    other.write_bytes(b"\x80\x04K\x01.")
    for path, message in ((pickled, "weights_only"), (other, "only .safetensors")):
        with pytest.raises(CheckpointError, match=message):
            embed_shards(shards, tmp_path / "emb", EmbedConfig(ModelSpec("poisonlab-tiny-32", str(path))))
    assert not (tmp_path / "emb").exists() or not list((tmp_path / "emb").rglob("*.npz"))


def test_mismatched_dimensions_are_a_clear_error(store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / store.name
    shutil.copytree(store, copy)
    part = read_shard_embeddings(copy, "00002")
    narrow = {space: v[:, :64] for space, v in part.vectors.items()}
    write_shard(copy, "00002", dataclasses.replace(part, vectors=narrow), "float32")
    with pytest.raises(EmbeddingMismatchError, match="64-d image embeddings but the store's model"):
        load_corpus(copy)


def test_scores_of_other_shards_are_refused_before_any_work(store: Path, scores: Path, tmp_path: Path) -> None:
    other = make_synth(tmp_path / "other", samples=120, per_shard=60, seed=5)
    with pytest.raises(DatasetMismatchError, match="describe different datasets"):
        clean_shards(other, scores, "top_fraction:detector=kdist,fraction=0.1", tmp_path / "clean")
    with pytest.raises(EmbeddingMismatchError, match="do not match the shards"):  # forced: the key check remains
        clean_shards(other, scores, "top_fraction:detector=kdist,fraction=0.1", tmp_path / "clean", force=True)
    assert not list((tmp_path / "clean").glob("*.tar"))
    # a second model's store must cover the same samples
    other_store = embed_shards(other, tmp_path / "emb", EmbedConfig(TINY))["store"]
    with pytest.raises(EmbeddingMismatchError, match="do not cover the same samples"):
        load_corpus({"victim": store, "reference": Path(other_store)})


def test_embeddings_of_a_changed_shard_are_refused(tmp_path: Path) -> None:
    src = make_synth(tmp_path / "src", samples=60, per_shard=30, seed=2)
    emb = tmp_path / "emb"
    embed_shards(src, emb, EmbedConfig(TINY))
    make_synth(tmp_path / "changed", samples=60, per_shard=30, seed=3)
    for name in ("00000.tar", "00000.parquet"):
        (src / name).write_bytes((tmp_path / "changed" / name).read_bytes())
    with pytest.raises(EmbeddingMismatchError, match="another version"):
        embed_shards(src, emb, EmbedConfig(TINY))


def test_scan_refuses_unknown_detectors_and_embeddings(store: Path, tmp_path: Path) -> None:
    from poisonlab.pipelines.registry import RegistryError

    with pytest.raises(RegistryError, match="unknown detector"):
        scan(store, ["kdistance"], tmp_path / "s")
    with pytest.raises(ValueError, match="asks for embeddings"):
        scan(store, {"clip_ref": {"detector": "clip_score", "embeddings": "reference"}}, tmp_path / "s")
    with pytest.raises(RegistryError, match="does not compute"):
        scan(store, {"kdist": {}, "e": {"detector": "ensemble", "detectors": ["kdist", "dao"]}}, tmp_path / "s")
    with pytest.raises(FileExistsError, match="holds other data"):  # never write score tables over a shard folder
        scan(store, ["kdist"], Path(read_info(store).source))


# --- the command line and the Prefect flow ------------------------------------------------------------------


def _cli():  # type: ignore[no-untyped-def]
    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        import_module(name)
    return app


def test_cli_embed_scan_clean_recall(shards: Path, tmp_path: Path) -> None:
    app, cli = _cli(), CliRunner()
    local = ["--executor", "local", "--json"]
    res = cli.invoke(app, ["embed", str(shards), "--out", str(tmp_path / "emb"), "--arch", "poisonlab-tiny-32", *local])
    assert res.exit_code == 0, res.output
    store = json.loads(res.stdout)["store"]
    res = cli.invoke(app, ["scan", store, "--out", str(tmp_path / "scores"), "--detector", "kdist:k=8",
                           "--detector", "kdist_bl=kdist:k=8,mode=batch_local,batch_size=64", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["columns"] == ["kdist", "kdist_bl"]
    res = cli.invoke(app, ["clean", str(shards), "--scores", str(tmp_path / "scores"), "--out", str(tmp_path / "clean"),
                           "--decision", "top_fraction:detector=kdist_bl,fraction=0.02", *local])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["by_rule"] == {"kdist_bl top 0.02": 4, "no_score": 1}
    keys = pq.read_table(tmp_path / "clean" / "_run" / "exclusions.parquet").column("key").to_pylist()
    pq.write_table(pa.table({"key": keys, "attack": ["flagged"] * len(keys)}), tmp_path / "manifest.parquet")
    res = cli.invoke(app, ["recall", "--scores", str(tmp_path / "scores"), "--manifest", str(tmp_path / "manifest.parquet")])
    assert res.exit_code == 0, res.output
    assert "| kdist_bl |" in res.stdout and (tmp_path / "scores" / "recall" / "roc.png").exists()
    res = cli.invoke(app, ["embed", str(shards), "--out", str(tmp_path / "e2"), "--arch", "poisonlab-tiny-32",
                           "--weights", str(tmp_path / "missing.safetensors"), *local])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_prefect_flow_on_dask_writes_what_the_local_run_writes(prefect_harness, shards: Path, store: Path,
                                                                scores: Path, tmp_path: Path) -> None:
    from poisonlab.flows.sanitize import sanitize

    result = sanitize(shards, tmp_path / "run", TINY, "top_fraction:detector=kdist,fraction=0.05", DETECTORS,
                      RunnerSpec(executor="prefect", workers=2, progress=False), batch_size=64)
    flow_store = Path(result["embed"]["store"])
    assert flow_store.name == store.name
    for shard in ("00000", "00003"):
        a, b = read_shard_embeddings(store, shard), read_shard_embeddings(flow_store, shard)
        assert a.keys == b.keys and a.vectors.keys() == b.vectors.keys() == {"image", "text"}
        assert all(np.array_equal(a.vectors[s], b.vectors[s]) for s in a.vectors)
    for shard in ("00000", "00003"):
        assert pq.read_table(scores / f"{shard}.parquet").equals(pq.read_table(tmp_path / "run" / "scores" / f"{shard}.parquet"))
    local = tmp_path / "local-clean"
    clean_shards(shards, scores, "top_fraction:detector=kdist,fraction=0.05", local)
    for shard in ("00000", "00001", "00002", "00003"):
        assert (local / f"{shard}.tar").read_bytes() == (tmp_path / "run" / "clean" / f"{shard}.tar").read_bytes()
    assert pq.read_table(local / "_run" / "exclusions.parquet").equals(pq.read_table(tmp_path / "run" / "clean" / "_run" / "exclusions.parquet"))
