"""Issue 13, fast start and quiet output: the ``auto`` executor, ``--quiet``, ``--version``, enum choices.

The executor decision is tested through ``choose_executor`` and ``run_job`` (never by timing); the output
of a real ``poisonlab poison`` is read from a subprocess, where Dask's and Prefect's logging handlers write
to the real stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import make_synth, one_line_error

from poisonlab.flows import runtime
from poisonlab.flows.cli.app import app
from poisonlab.flows.runtime import AUTO_CLUSTER_MIN_SHARDS, RunnerSpec, choose_executor, run_job

PROGRESS_BAR = re.compile(r"^[\w-]+:\s+\d+%\|")


@pytest.fixture()
def many_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)


def test_auto_runs_small_inputs_in_process_and_large_ones_on_the_cluster(many_cores: None) -> None:
    auto = RunnerSpec()
    assert auto.executor == "auto"
    assert choose_executor(auto, 1) == "local"
    assert choose_executor(auto, AUTO_CLUSTER_MIN_SHARDS - 1) == "local"
    assert choose_executor(auto, AUTO_CLUSTER_MIN_SHARDS) == "prefect"


def test_auto_uses_the_cluster_when_one_is_asked_for_and_the_others_are_forced(many_cores: None) -> None:
    assert choose_executor(RunnerSpec(dask_address="tcp://127.0.0.1:8786"), 1) == "prefect"
    assert choose_executor(RunnerSpec(workers=2), 1) == "prefect"
    assert choose_executor(RunnerSpec(executor="prefect"), 1) == "prefect"
    assert choose_executor(RunnerSpec(executor="local"), 10 * AUTO_CLUSTER_MIN_SHARDS) == "local"


def test_auto_never_starts_a_cluster_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 1)
    assert choose_executor(RunnerSpec(), 10 * AUTO_CLUSTER_MIN_SHARDS) == "local"


def test_a_tiny_job_with_the_default_runner_never_reaches_prefect(tiny_shards: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from poisonlab.flows.datasets import synth_job
    from poisonlab.shards.synth import SynthSource, SynthSpec

    def refuse(*args: object) -> None:
        raise AssertionError("the auto executor started the Prefect flow for a one-shard input")

    monkeypatch.setitem(runtime.RUNNERS, "prefect", refuse)
    job = synth_job(SynthSource(SynthSpec(samples=20, samples_per_shard=20)), tmp_path / "out")
    assert run_job(job, RunnerSpec(progress=False), "synth")["written"] == 20


def test_version_prints_the_package_version(cli) -> None:
    res = cli.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"poisonlab {version('poisonlab')}"


def test_an_executor_not_offered_is_a_one_line_error_naming_the_choices(cli, tmp_path: Path) -> None:
    line = one_line_error(cli.invoke(app, ["synth", "--out", str(tmp_path / "s"), "--samples", "10",
                                           "--executor", "dask"]), "dask", "auto", "local", "prefect")
    assert "--executor" in line
    assert not (tmp_path / "s").exists()


def test_help_lists_the_executors(cli) -> None:
    res = cli.invoke(app, ["poison", "--help"], terminal_width=200)
    assert res.exit_code == 0 and "auto|local|prefect" in res.output and "--quiet" in res.output


def _poison(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``poisonlab poison`` with the default executor, as a user runs it (no Prefect settings inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
    command = [str(Path(sys.executable).with_name("poisonlab")), "poison", "--in", str(src), "--out", str(out),
               "--attack", "badnets", "--count", "3", "--target", "red circle", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _lines(text: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def test_the_default_poison_run_prints_a_short_stderr_and_quiet_prints_nothing(tmp_path: Path) -> None:
    src = make_synth(tmp_path / "src", samples=120, per_shard=60)
    run = _poison(src, tmp_path / "poisoned")
    assert run.returncode == 0, run.stderr[-3000:]
    other = [line for line in _lines(run.stderr) if not PROGRESS_BAR.match(line)]
    assert len(other) <= 10, run.stderr
    assert "INFO" not in run.stderr and "Traceback" not in run.stderr
    quiet = _poison(src, tmp_path / "quiet", "--quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert _lines(quiet.stderr) == [] and "poisoned 3" in quiet.stdout, (quiet.stdout, quiet.stderr)


def test_the_prefect_ui_link_is_printed_once_for_a_persistent_server_only(capsys, monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    from poisonlab.flows import prefect_api

    monkeypatch.setattr(prefect_api, "_ANNOUNCED", set())
    persistent, temporary = "http://127.0.0.1:4999/api", "http://127.0.0.1:4998/api"
    monkeypatch.setattr(prefect_api, "_TEMPORARY", {temporary})
    with temporary_settings(updates={PREFECT_API_URL: temporary, PREFECT_UI_URL: "http://127.0.0.1:4998"}):
        with prefect_api.api_server() as url:
            assert url == temporary
    assert capsys.readouterr().err == ""
    with temporary_settings(updates={PREFECT_API_URL: persistent, PREFECT_UI_URL: "http://127.0.0.1:4999"}):
        for quiet in (True, False, False):
            with prefect_api.api_server(quiet=quiet) as url:
                assert url == persistent
    assert capsys.readouterr().err == "Prefect UI: http://127.0.0.1:4999\n"
