"""Shared fixtures: tiny generated shard sets, built once per session, and offline settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The science checks train models whose floats depend on the CPU kernels torch picks: their bars were measured
# with AVX2 kernels, and on an AVX-512 machine (2026-12-06) the same recipe trained another victim (badnets
# learned at 0.787 instead of 0.999; the optimised patch then survived cleaning). Torch's own kernels, MKL's and
# oneDNN's are held to AVX2 for the test session, and its subprocesses, so every x86-64 machine with AVX2
# trains the same models (set before torch is imported; a variable already set is left as it is).
for _isa_name, _isa_value in (("ATEN_CPU_CAPABILITY", "avx2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
                              ("ONEDNN_MAX_CPU_ISA", "AVX2")):
    os.environ.setdefault(_isa_name, _isa_value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from poisonlab.pipelines.executor import run_local  # noqa: E402
from poisonlab.shards.plan import finalize_folder, plan_source_tasks  # noqa: E402
from poisonlab.shards.synth import SynthSource, SynthSpec  # noqa: E402

# Session fixtures that train the shared science models: the tests using them run first, before any test has
# started the session's Dask cluster, Prefect server or flow clients, whose idle processes and threads took
# a quarter of the trainings' speed on 2 cores (measured: 188 pairs/s alone, 145 in CI's usual order).
TRAINS_SHARED_MODELS = frozenset({"science_experiment", "graph_experiment"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Stable reorder: tests that need the shared trained models first, everything else as collected."""
    items.sort(key=lambda item: not TRAINS_SHARED_MODELS.intersection(getattr(item, "fixturenames", ())))


@pytest.fixture(autouse=True)
def _torch_threads_unchanged() -> Iterator[None]:
    """Every test leaves torch's process-wide thread count as it found it: one that did not would run the
    rest of the session (the science check's three trainings included) on fewer cores."""
    import torch

    threads = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == threads, "this test left torch on another number of threads"


def make_synth(out: Path, samples: int = 240, seed: int = 0, per_shard: int = 60, image_size: int = 32) -> Path:
    """Generate a small shard set in-process (no Prefect) — the building block of most tests.

    The same job as ``poisonlab synth`` (so the same files, ``dataset.json`` included), run here.
    """
    from poisonlab.flows.datasets import synth_job
    from poisonlab.pipelines.job import run_job_local

    src = SynthSource(SynthSpec(samples=samples, seed=seed, samples_per_shard=per_shard, image_size=image_size))
    run_job_local(synth_job(src, out))
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 generated pairs in 4 shards of 60. Treat as read-only."""
    return make_synth(tmp_path_factory.mktemp("tiny") / "shards")


def make_graph_synth(out: Path, samples: int = 84, seed: int = 0, per_shard: int = 28, eval_per_class: int = 0) -> Path:
    """A small generated graph dataset in-process: the same job as ``poisonlab synth --modality graph``."""
    from poisonlab.flows.datasets import synth_graph_dataset
    from poisonlab.flows.runtime import RunnerSpec
    from poisonlab.shards.graph_synth import GraphSynthSpec

    spec = GraphSynthSpec(samples=samples, seed=seed, samples_per_shard=per_shard)
    synth_graph_dataset(out, spec, eval_per_class, RunnerSpec(executor="local", progress=False))
    return out


@pytest.fixture(scope="session")
def graph_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """84 generated graphs in 3 shards of 28, with an eval split of 2 per class in ``eval/``. Read-only."""
    return make_graph_synth(tmp_path_factory.mktemp("graphs") / "shards", eval_per_class=2)


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness: a temporary database and server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scheduler and two workers started as separate processes whose working directory is not the
    tests' (as on a cluster the user already has); yields the scheduler file. Shared by the session."""
    from dask_cluster import loopback_cluster

    root = tmp_path_factory.mktemp("cluster")
    (root / "elsewhere").mkdir()
    with loopback_cluster(root, workers=2, cwd=root / "elsewhere") as scheduler_file:
        yield scheduler_file


@pytest.fixture(scope="session")
def cli():
    """A typer test runner with every command module registered on the app."""
    import importlib

    from typer.testing import CliRunner

    from poisonlab.flows.cli import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(name)
    return CliRunner()


@pytest.fixture(scope="session")
def eval_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 images per class (48), with classes.json, as ``poisonlab synth`` writes the eval split. Read-only."""
    from poisonlab.shards.synth import write_eval_metadata

    out = tmp_path_factory.mktemp("eval") / "eval"
    source = SynthSource(SynthSpec(samples=48, seed=0, samples_per_shard=24, partial_rate=0, noise_rate=0,
                                   junk_rate=0), split="eval", balanced=True)
    finalize_folder(out, run_local(plan_source_tasks(source, source.shards(), out)))
    write_eval_metadata(out)
    return out


def files(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` by relative path: outputs compared byte for byte."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(res: object, *words: str) -> str:
    """The command failed with exactly one ``error: ...`` line naming ``words``, and no traceback."""
    assert res.exit_code in (1, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def science_experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shipped ``recipes/multi_attack.yaml`` run once per session (about 35 minutes on 2 cores, first in the
    session): one victim with five backdoors, its clean baseline and the model cleaned by the default detector
    serve every science check that needs a trained tiny CLIP (the federated check continues the clean
    baseline). Returns the experiment's result plus ``root`` and ``spec``.

    ``POISONLAB_SCIENCE_DIR=DIR`` runs it in ``DIR/multi_attack`` instead of a fresh folder: an experiment
    resumes from its step markers, so checking the tests again against the same trained models takes seconds."""
    from poisonlab.flows.experiment import load_experiment, run_experiment
    from poisonlab.flows.runtime import RunnerSpec

    spec, base = load_experiment(Path(__file__).parents[1] / "recipes" / "multi_attack.yaml")
    kept = os.environ.get("POISONLAB_SCIENCE_DIR")
    root = (Path(kept) if kept else tmp_path_factory.mktemp("science")) / "multi_attack"
    result = run_experiment(spec, root, RunnerSpec(executor="local", progress=False), base)
    return {**result, "root": root, "spec": spec}


@pytest.fixture(scope="session")
def graph_experiment(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shipped ``recipes/graph_subgraph.yaml`` run once per session (6,000 generated graphs, three
    graph_clip trainings of 8 epochs: about 4 minutes on 2 cores, first in the session)."""
    from poisonlab.flows.experiment import load_experiment, run_experiment
    from poisonlab.flows.runtime import RunnerSpec

    spec, base = load_experiment(Path(__file__).parents[1] / "recipes" / "graph_subgraph.yaml")
    root = tmp_path_factory.mktemp("science") / "graph_subgraph"
    result = run_experiment(spec, root, RunnerSpec(executor="local", progress=False), base)
    return {**result, "root": root, "spec": spec}
