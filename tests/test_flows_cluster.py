"""A cluster the user already has: a scheduler and two workers started as separate processes in another
working directory. Relative paths given to the command line name the driver's folders, and a task that
cannot see its input fails loudly without leaving a completion marker."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import files, make_synth, one_line_error
from dask_cluster import address_of

from poisonlab.flows import poison as poison_flow
from poisonlab.flows.runtime import RunnerSpec, run_job, run_task_results
from poisonlab.pipelines.visibility import TaskPathError
from poisonlab.shards.plan import folder_job

POISON = ["poison", "--in", "synth", "--out", "poisoned", "--attack", "badnets", "--count", "4",
          "--target", "red circle", "--seed", "3", "--json"]
CLEAN = ["clean", "poisoned", "--scores", "scores", "--decision", "top_fraction:detector=kdist,fraction=0.05",
         "--out", "cleaned", "--excluded-out", "excluded", "--json"]


@pytest.fixture
def cluster(dask_cluster: Path) -> Path:
    """The session's scheduler file: two workers whose working directory is not the driver's."""
    return dask_cluster


def _shard_files(directory: Path) -> list[str]:
    """Shard tars, sidecars and completion markers (NNNNN.*) anywhere below ``directory``."""
    return sorted(p.name for p in directory.rglob("[0-9][0-9][0-9][0-9][0-9]*") if p.is_file())


def _run_twice(cli, args: list[str], remote: list[str], *outs: str) -> None:  # type: ignore[no-untyped-def]
    """``args`` in-process, then on the cluster into the same relative folders: the same bytes."""
    from poisonlab.flows.cli import app

    local = cli.invoke(app, [*args, "--executor", "local"])
    assert local.exit_code == 0, local.output
    reference = {out: files(Path(out)) for out in outs}
    for out in outs:  # the same absolute paths for both runs: outputs record where they came from
        os.rename(out, f"{out}-local")
    on_cluster = cli.invoke(app, [*args, *remote])
    assert on_cluster.exit_code == 0, on_cluster.output
    assert {out: files(Path(out)) for out in outs} == reference
    assert all(reference.values())  # something was compared


def test_poison_and_clean_with_relative_paths_on_an_existing_cluster(prefect_harness, cli, cluster: Path,
                                                                     tmp_path: Path, monkeypatch) -> None:
    from poisonlab.flows.cli import app

    monkeypatch.chdir(tmp_path)
    make_synth(Path("synth"), samples=120, per_shard=60)
    scheduler = os.path.relpath(cluster, tmp_path)  # a relative scheduler file, too
    _run_twice(cli, POISON, ["--dask-address", address_of(cluster)], "poisoned")
    embedded = cli.invoke(app, ["embed", "poisoned", "--out", "emb", "--arch", "poisonlab-tiny-32", "--executor",
                                "local", "--json"])
    assert embedded.exit_code == 0, embedded.output
    store = os.path.relpath(json.loads(embedded.stdout)["store"], tmp_path)
    scanned = cli.invoke(app, ["scan", store, "--out", "scores", "--detector", "kdist:k=8"])
    assert scanned.exit_code == 0, scanned.output
    _run_twice(cli, CLEAN, ["--dask-scheduler-file", scheduler], "cleaned", "excluded")
    assert len(_shard_files(Path("cleaned"))) == 3 * 2
    assert _shard_files(cluster.parent / "elsewhere") == []  # nothing landed in the workers' directory


def _hide_input_once_planned(monkeypatch, src: Path) -> None:  # type: ignore[no-untyped-def]
    """The input folder vanishes between planning (in the driver) and the shard tasks, as it is absent on a
    worker that does not share the driver's file system."""
    original = poison_flow.run_job

    def hidden(job, runner, label):  # type: ignore[no-untyped-def]
        src.rename(src.with_name("hidden"))
        return original(job, runner, label)

    monkeypatch.setattr(poison_flow, "run_job", hidden)


def test_a_task_that_cannot_see_its_input_fails_in_one_line_and_marks_nothing(cli, tmp_path: Path,
                                                                               monkeypatch) -> None:
    from poisonlab.flows.cli import app

    src = make_synth(tmp_path / "synth", samples=120, per_shard=60)
    _hide_input_once_planned(monkeypatch, src)
    res = cli.invoke(app, ["poison", "--in", str(src), "--out", str(tmp_path / "out"), "--attack", "badnets",
                           "--count", "2", "--target", "red circle", "--executor", "local", "--json"])
    one_line_error(res, "shard 00000", f"input {src} does not exist", "on worker", f"pid {os.getpid()}")
    assert _shard_files(tmp_path / "out") == []


def test_the_error_comes_back_from_a_cluster_worker_and_no_marker_is_written(prefect_harness, cluster: Path,
                                                                             tmp_path: Path) -> None:
    src = make_synth(tmp_path / "synth", samples=120, per_shard=60)
    remote = RunnerSpec(dask_address=address_of(cluster), progress=False)
    tasks = folder_job(src, tmp_path / "out", []).tasks()
    shutil.rmtree(tmp_path / "out")  # the output folder is not there at task time
    with pytest.raises(TaskPathError, match=r"shard 0000[01]: output folder .*/out does not exist on worker .*elsewhere"):
        run_task_results(tasks, remote)
    assert not (tmp_path / "out").exists()
    job = folder_job(src, tmp_path / "out", [])
    src.rename(tmp_path / "hidden")
    with pytest.raises(TaskPathError, match=r"shard 0000[01]: input .*/synth does not exist on worker"):
        run_job(job, remote, "copy")
    assert _shard_files(tmp_path / "out") == []


def test_a_missing_or_foreign_scheduler_file_is_one_line_before_anything_is_written(cli, tmp_path: Path) -> None:
    from poisonlab.flows.cli import app

    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"not": "a scheduler"}')
    for path, words in ((tmp_path / "missing.json", "cannot read the Dask scheduler file"),
                        (foreign, "is not a Dask scheduler file")):
        res = cli.invoke(app, ["synth", "--out", str(tmp_path / "out"), "--samples", "10",
                               "--dask-scheduler-file", str(path)])
        one_line_error(res, words, str(path))
    res = cli.invoke(app, ["synth", "--out", str(tmp_path / "out"), "--samples", "10", "--dask-address",
                           "tcp://127.0.0.1:1", "--dask-scheduler-file", str(foreign)])
    one_line_error(res, "not both")
    assert not (tmp_path / "out").exists()
