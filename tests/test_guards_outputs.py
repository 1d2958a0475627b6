"""Issue 11, findings 2 and 5: no command writes into a folder holding another kind of poisonlab output or
into its input (judged by the folder's own records, not by file extensions); an --out that is a file and an
unknown --executor are one-line errors before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import files, one_line_error

from poisonlab.flows.cli import app
from poisonlab.flows.guards import KIND_FILE, folder_kind


@pytest.fixture(scope="module")
def folders(cli, tiny_shards, tmp_path_factory) -> dict[str, Path]:
    """One folder of each kind: shards, poisoned, scores (a scan's records), embeddings, a run."""
    root = tmp_path_factory.mktemp("kinds")
    shards = root / "shards"
    shutil.copytree(tiny_shards, shards)
    poisoned = root / "poisoned"
    res = cli.invoke(app, ["poison", "--in", str(shards), "--out", str(poisoned), "--attack", "badnets", "--count", "3",
                           "--target", "red circle", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    scores = root / "scores"
    scores.mkdir()
    for shard in ("00000", "00001"):
        shutil.copy(tiny_shards / f"{shard}.parquet", scores / f"{shard}.parquet")  # same names as sidecars
    (scores / "scan.json").write_text("{}")
    emb = root / "emb"
    (emb / "model-abc").mkdir(parents=True)
    (emb / "model-abc" / "model.json").write_text("{}")
    run = root / "run"
    run.mkdir()
    (run / "model_config.json").write_text("{}")
    return {"shards": shards, "poisoned": poisoned, "scores": scores, "emb": emb, "run": run}


def test_each_folder_is_known_by_its_records(folders):
    assert {name: folder_kind(path) for name, path in folders.items()} == {
        "shards": "shards", "poisoned": "poisoned", "scores": "scores", "emb": "embeddings", "run": "run"}
    assert json.loads((folders["poisoned"] / KIND_FILE).read_text()) == {"kind": "poisoned"}


def test_clean_into_the_score_tables_is_refused_and_leaves_them_untouched(cli, folders):
    before = files(folders["scores"])
    res = cli.invoke(app, ["clean", str(folders["shards"]), "--scores", str(folders["scores"]), "--decision",
                           "top_fraction:detector=kdist,fraction=0.1", "--out", str(folders["scores"]),
                           "--executor", "local"])
    one_line_error(res, "scores")
    assert files(folders["scores"]) == before


@pytest.mark.parametrize("command, out, word", [
    (["synth", "--samples", "10", "--executor", "local"], "poisoned", "poisoned"),
    (["synth", "--samples", "10", "--executor", "local"], "scores", "scores"),
    (["poison", "--in", "{shards}", "--attack", "badnets", "--count", "1", "--target", "red circle",
      "--executor", "local"], "emb", "embeddings"),
    (["poison", "--in", "{shards}", "--attack", "badnets", "--count", "1", "--target", "red circle",
      "--executor", "local"], "shards", "input"),
    (["clean", "{shards}", "--scores", "{scores}", "--decision", "top_fraction:detector=kdist,fraction=0.1",
      "--executor", "local"], "run", "run"),
    (["clean", "{shards}", "--scores", "{scores}", "--decision", "top_fraction:detector=kdist,fraction=0.1",
      "--executor", "local"], "shards", "input"),
    (["scan", "{emb}/model-abc"], "shards", "shards"),
    (["embed", "{shards}", "--arch", "poisonlab-tiny-32", "--executor", "local"], "run", "run"),
    (["import", "--images", "{run}", "--executor", "local"], "scores", "scores"),
    (["recall", "--scores", "{scores}", "--manifest", "{poisoned}/_run/manifest.parquet"], "poisoned", "poisoned"),
])
def test_writing_into_another_kind_of_output_is_refused(cli, folders, command, out, word):
    before = files(folders[out])
    args = [a.format(**folders) for a in command] + ["--out", str(folders[out])]
    one_line_error(cli.invoke(app, args), word)
    assert files(folders[out]) == before


@pytest.mark.parametrize("command", [
    ["synth", "--samples", "10", "--executor", "local"],
    ["poison", "--in", "{shards}", "--attack", "badnets", "--count", "1", "--target", "red circle", "--executor", "local"],
    ["clean", "{shards}", "--scores", "{scores}", "--decision", "top_fraction:detector=kdist,fraction=0.1",
     "--executor", "local"],
])
def test_an_out_that_is_a_file_is_a_one_line_error(cli, folders, tmp_path, command):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    one_line_error(cli.invoke(app, [a.format(**folders) for a in command] + ["--out", str(target)]), "file")
    assert target.read_text() == "keep me"


def test_an_unknown_executor_fails_before_attack_json_is_written(cli, folders, tmp_path):
    out = tmp_path / "out"
    res = cli.invoke(app, ["poison", "--in", str(folders["shards"]), "--out", str(out), "--attack", "badnets",
                           "--count", "1", "--target", "red circle", "--executor", "bogus"])
    one_line_error(res, "bogus")
    assert not out.exists()
