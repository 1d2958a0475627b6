"""The Prefect flow on Dask: byte-identical shards whatever the number of workers, also on an existing
cluster reached by ``--dask-address``."""

from __future__ import annotations

import json
from importlib import import_module
from pathlib import Path

import pytest
from dask_cluster import address_of
from typer.testing import CliRunner

from poisonlab.flows.runtime import RunnerSpec, run_tasks
from poisonlab.shards.plan import finalize_folder, plan_source_tasks
from poisonlab.shards.synth import SynthSource, SynthSpec

SPEC = SynthSpec(samples=360, seed=11, samples_per_shard=40)


def contents(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def synth_with(spec: RunnerSpec, out: Path) -> dict[str, bytes]:
    source = SynthSource(SPEC)
    finalize_folder(out, run_tasks(plan_source_tasks(source, source.shards(), out), spec, label="synth"))
    return contents(out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return synth_with(RunnerSpec(executor="local", progress=False), tmp_path_factory.mktemp("ref"))


def test_one_and_two_dask_workers_write_the_same_bytes(prefect_harness, reference, tmp_path: Path) -> None:
    one = synth_with(RunnerSpec(executor="prefect", workers=1, progress=False), tmp_path / "one")
    two = synth_with(RunnerSpec(executor="prefect", workers=2, progress=False), tmp_path / "two")
    assert len(one) == 3 * SPEC.shard_count() + 1  # tar, sidecar, stats per shard, and sizes.json
    assert one == two == reference


def _cli():  # type: ignore[no-untyped-def]
    from poisonlab.flows.cli import COMMAND_MODULES, app

    for name in COMMAND_MODULES:
        import_module(name)
    return app


@pytest.fixture
def loopback_cluster(dask_cluster: Path) -> str:
    """The session's Dask scheduler and two workers, started as separate processes on 127.0.0.1."""
    return address_of(dask_cluster)


def test_cli_runs_the_flow_on_an_existing_cluster(prefect_harness, loopback_cluster: str, tmp_path: Path) -> None:
    from distributed import Client

    def transitions() -> int:
        with Client(loopback_cluster, timeout=30) as client:
            return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)

    assert loopback_cluster.startswith("tcp://127.0.0.1:")
    app = _cli()
    args = ["synth", "--samples", str(SPEC.samples), "--seed", str(SPEC.seed), "--samples-per-shard",
            str(SPEC.samples_per_shard), "--eval-per-class", "2", "--json"]
    before = transitions()
    remote = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "remote"), "--dask-address", loopback_cluster])
    assert remote.exit_code == 0, remote.output
    after = transitions()
    local = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "local"), "--executor", "local"])
    assert local.exit_code == 0, local.output
    assert contents(tmp_path / "remote") == contents(tmp_path / "local")
    assert json.loads(remote.stdout)["train"]["written"] == SPEC.samples
    assert after - before >= 2 * (SPEC.shard_count() + 1)  # the shard tasks (train and eval) ran on that cluster
