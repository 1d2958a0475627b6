"""``poisonlab federate train RECIPE --out DIR``: the rounds, the per-round table, the report, a resumed
rerun that does nothing twice, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

import poisonlab.flows.cli.federate  # noqa: F401  (registers the sub-app)
import poisonlab.flows.cli.sanitize  # noqa: F401  (registers recall)
from poisonlab.flows.cli.app import app

runner = CliRunner()

RECIPE = {
    "name": "cli", "seed": 0, "partition": {"clients": 4},
    "malicious": {"clients": [1], "attack": {"attack": "badnets", "target": "red circle", "count": 20,
                                             "params": {"pattern": "checkerboard"}}},
    "rounds": 2, "clients_per_round": 2, "local_steps": 1, "probe": {"images": 8},
    "train": {"batch_size": 8, "lr": 5e-4, "warmup_steps": 0, "workers": 0, "device": "cpu", "threads": 1,
              "shuffle_buffer": 16},
    "aggregators": [{"name": "median"}, {"name": "fedavg", "id": "inspected", "inspection": {"score": "cosine"}}],
}


def _write(tmp_path: Path, tiny_shards: Path, eval_split: Path, **changes: object) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "data": {"shards": str(tiny_shards), "eval": str(eval_split)},
                                    **changes}))
    return path


def test_federate_train_runs_rounds_and_writes_the_report(tiny_shards: Path, eval_split: Path, tmp_path: Path) -> None:
    recipe, out = _write(tmp_path, tiny_shards, eval_split), tmp_path / "out"
    result = runner.invoke(app, ["federate", "train", str(recipe), "--out", str(out), "--executor", "local", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [a["aggregator"] for a in summary["aggregators"]] == ["median", "inspected"]
    for label in ("median", "inspected"):
        rows = json.loads((out / "runs" / label / "rounds.json").read_text())
        assert [r["round"] for r in rows] == [-1, 0, 1]
        assert all(0 <= r["zero_shot"] <= 1 and 0 <= r["asr"] <= 1 for r in rows)
        assert (out / "runs" / label / "rounds.parquet").is_file()
    assert json.loads((out / "clients.json").read_text())["malicious"] == [1]
    manifest = pq.read_table(out / "poisoned" / "_run" / "manifest.parquet")
    assert set(manifest.column("client").to_pylist()) == {1} and manifest.num_rows == 20
    assert {p.name for p in (out / "report").iterdir()} >= {"comparison.json", "report.md", "rounds.png"}
    _recall_measures_client_inspection(out, summary)
    before = (out / "runs" / "median" / "rounds" / "0001" / "global.safetensors").stat().st_mtime_ns
    again = runner.invoke(app, ["federate", "train", str(recipe), "--out", str(out), "--executor", "local", "-q"])
    assert again.exit_code == 0, again.output
    assert (out / "runs" / "median" / "rounds" / "0001" / "global.safetensors").stat().st_mtime_ns == before
    other = runner.invoke(app, ["federate", "train", str(recipe), "--out", str(out), "--set", "local_steps=2"])
    assert other.exit_code == 2 and "local_steps differ" in other.output, other.output


def _recall_measures_client_inspection(out: Path, summary: dict) -> None:
    """`poisonlab recall` on a federated run: one row per (client, round), positives from clients.json."""
    run = out / "runs" / "inspected"
    result = runner.invoke(app, ["recall", "--scores", str(run), "--manifest", str(out), "--out",
                                 str(out / "inspection_recall"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    clients = [c for r in ("0000", "0001")
               for c in pq.read_table(run / "rounds" / r / "inspection.parquet").column("client").to_pylist()]
    assert report["samples"] == len(clients) == 4 and report["positives"] == clients.count(1)
    assert set(report["detectors"]) == {"norm", "cosine", "eminspector"}
    line = next(a for a in summary["aggregators"] if a["aggregator"] == "inspected")
    for score, auroc in line["detection_auroc"].items():
        assert report["detectors"][score]["all"]["auroc"] == auroc or auroc is None, (score, auroc)
    stranger = runner.invoke(app, ["recall", "--scores", str(run), "--manifest", str(out / "elsewhere.json"),
                                   "--out", str(out / "stranger")])
    assert stranger.exit_code == 2 and "clients.json" in stranger.output, stranger.output


def test_bad_recipe_is_one_line(tiny_shards: Path, eval_split: Path, tmp_path: Path) -> None:
    recipe = _write(tmp_path, tiny_shards, eval_split, clients_per_round=9)
    result = runner.invoke(app, ["federate", "train", str(recipe), "--out", str(tmp_path / "o")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "clients_per_round" in lines[0]
    result = runner.invoke(app, ["federate", "train", str(recipe), "--out", str(tmp_path / "o"), "--set", "rounds"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_a_sigkilled_run_resumes_to_the_same_weights(tiny_shards: Path, eval_split: Path, tmp_path: Path) -> None:
    """A real kill (SIGKILL of the command's process) in the middle of round 1; the rerun finishes the run
    and its final global weights are those of an uninterrupted run, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from poisonlab.federated.store import finished_rounds

    recipe = _write(tmp_path, tiny_shards, eval_split, rounds=3, aggregators=[{"name": "fedavg"}])
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    command = [sys.executable, "-c", "from poisonlab.flows.cli import main; main()", "federate", "train", str(recipe), "--executor", "local",
               "-q", "--out"]
    proc = subprocess.Popen([*command, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    round_1 = killed / "runs" / "fedavg" / "rounds" / "0001" / "clients"
    deadline = time.monotonic() + 600
    while proc.poll() is None and not list(round_1.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert finished_rounds(killed / "runs" / "fedavg") < 3
    for out in (killed, whole):
        result = runner.invoke(app, ["federate", "train", str(recipe), "--out", str(out), "--executor", "local", "-q"])
        assert result.exit_code == 0, result.output
    final = Path("runs") / "fedavg" / "rounds" / "0002" / "global.safetensors"
    a, b = load_file(str(killed / final)), load_file(str(whole / final))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
