"""Shared fixtures: tiny generated shard sets, built once per session, and offline settings."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from poisonlab.pipelines.executor import run_local  # noqa: E402
from poisonlab.shards.plan import finalize_folder, plan_source_tasks  # noqa: E402
from poisonlab.shards.synth import SynthSource, SynthSpec  # noqa: E402


def make_synth(out: Path, samples: int = 240, seed: int = 0, per_shard: int = 60, image_size: int = 32) -> Path:
    """Generate a small shard set in-process (no Prefect) — the building block of most tests."""
    src = SynthSource(SynthSpec(samples=samples, seed=seed, samples_per_shard=per_shard, image_size=image_size))
    finalize_folder(out, run_local(plan_source_tasks(src, src.shards(), out)))
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 generated pairs in 4 shards of 60. Treat as read-only."""
    return make_synth(tmp_path_factory.mktemp("tiny") / "shards")


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness: a temporary database and server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
