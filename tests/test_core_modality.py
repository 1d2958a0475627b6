"""A modality registered by an adapter (here: vectors in ``.npz`` payloads, captions optional) flows through
the same planning and copying as images: nothing refuses its samples for not being images."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from poisonlab.attacks.index import index_dataset
from poisonlab.pipelines.executor import run_local
from poisonlab.pipelines.job import run_job_local
from poisonlab.pipelines.registry import Params, get_registry
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import Modality, read_dataset_record, read_policy_for, write_dataset_record
from poisonlab.shards.layout import sidecar_path
from poisonlab.shards.plan import finalize_folder, folder_job, plan_folder_tasks
from poisonlab.shards.reader import ReadPolicy
from poisonlab.shards.writer import ShardWriter

MODALITY = "test_vectors"
SHARDS, PER_SHARD = 2, 5

if MODALITY not in get_registry("modality"):
    @get_registry("modality").register(MODALITY, Params, summary="vectors in .npz payloads (tests only)")
    def _vectors(params: Params) -> Modality:
        return Modality(MODALITY, frozenset({"npz"}), require_text=False)


def _npz(i: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(4, dtype=np.float32) + i)
    return buffer.getvalue()


@pytest.fixture
def vectors(tmp_path: Path) -> Path:
    """Two shards of npz samples; every other one has no caption."""
    out = tmp_path / "vectors"
    stats = []
    for s in range(SHARDS):
        shard = f"{s:05d}"
        with ShardWriter(out, shard) as writer:
            for i in range(PER_SHARD):
                n = s * PER_SHARD + i
                writer.write(Sample(key=f"{n:09d}", payload=_npz(n), payload_ext="npz",
                                    text=f"vector {n}" if n % 2 else None))
            stats.append(writer.close())
    finalize_folder(out, stats)
    write_dataset_record(out, MODALITY, ("npz",))
    return out


def test_a_registered_modality_sets_the_read_policy(vectors: Path) -> None:
    policy = read_policy_for(vectors)
    assert policy.payload_extensions == frozenset({"npz"}) and not policy.require_text and not policy.probe_images


def test_plan_folder_tasks_reads_the_folder_with_its_modality(vectors: Path, tmp_path: Path) -> None:
    stats = run_local(plan_folder_tasks(vectors, tmp_path / "copy", []))
    assert sum(s.written for s in stats) == SHARDS * PER_SHARD
    assert {k for s in stats for k in s.by_status} == {"ok"}
    # the image default would have refused every sample: the policy is what changed
    refused = run_local(plan_folder_tasks(vectors, tmp_path / "as-images", [], ReadPolicy()))
    assert sum(s.written for s in refused) == 0


def test_a_copy_keeps_the_dataset_record(vectors: Path, tmp_path: Path) -> None:
    summary = run_job_local(folder_job(vectors, tmp_path / "copy", []))
    assert summary["written"] == summary["samples"] == SHARDS * PER_SHARD
    assert read_dataset_record(tmp_path / "copy").modality == MODALITY
    assert (tmp_path / "copy" / "00001.tar").read_bytes() == (vectors / "00001.tar").read_bytes()


def test_the_attack_planner_indexes_non_image_samples(vectors: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"  # tars without sidecars: the planner streams them with the folder's policy
    shutil.copytree(vectors, plain)
    for s in range(SHARDS):
        sidecar_path(plain, f"{s:05d}").unlink()
    index = index_dataset(plain)
    assert index.total == SHARDS * PER_SHARD
    assert not any(c.has_image for c in index.candidates)
