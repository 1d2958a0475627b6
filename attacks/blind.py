"""A blind copy of a poisoned folder: the shards a filter under test is handed, without their ground truth.

A poisoned folder carries its own answers: each poisoned ``KEY.json`` holds ``"poisonlab": {attack,
target, original_caption, ...}``, its sidecar row says ``changed``/``added``, ``touched_by=poison`` and
the provenance, and the manifest, ``attack.json`` and ``poison.json`` sit beside the shards. A blind copy
is the same samples (same keys, order, payload bytes and captions) with every sample alike: ``KEY.json``
without the reserved ``poisonlab`` record, sidecar rows with the status a fresh read gives (``ok`` for
every written sample), no ``touched_by`` and no provenance, and no run-level file. The ground truth stays
in the poisoned folder (``_run/manifest.parquet``), so ``recall`` is run with it on scores of the copy.

It is an ordinary folder job (one task per shard, markers, accounting): ``BlindSource`` reads each shard of
the poisoned folder and forgets what the reader would carry over (the provenance of a sample listed in
the sidecar but not in the tar, where it came from), before any stage or writer sees it. The copy's
stats do not name the folder it came from: that folder holds the manifest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from poisonlab.attacks.manifest import manifest_path, write_manifest
from poisonlab.pipelines.accounting import ShardResult
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import read_policy_for
from poisonlab.shards.fingerprint import dataset_fingerprint, table_fingerprints, with_fingerprints
from poisonlab.shards.layout import list_shards
from poisonlab.shards.plan import FolderJob, FolderSource
from poisonlab.shards.reader import ReadPolicy

PROVENANCE_KEY = "poisonlab"  # the reserved meta key attacks write (pipelines.sample.RESERVED_META_KEYS)
CARRIED_KEYS = frozenset({PROVENANCE_KEY, "source_status"})  # what the reader adds to rows without a tar member


@dataclasses.dataclass(frozen=True)
class BlindSource:
    """The samples of one shard of ``directory`` as a stranger would write them: no provenance, no stage
    trail. Shaped like ``FolderSource`` (``directory``, ``policy``), so completion markers fingerprint the
    input shard's bytes and not the folder's path."""

    directory: str
    policy: ReadPolicy = ReadPolicy()

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        for sample in FolderSource(self.directory, self.policy)(shard, shard_errors):
            meta = {k: v for k, v in sample.meta.items() if k not in CARRIED_KEYS}
            yield dataclasses.replace(sample, meta=meta, touched_by=())


class BlindJob(FolderJob):
    """The copy job; once every shard is written, the poisoned folder's manifest learns the copy's
    fingerprint (``record_blind_copy``), whichever way the job was run."""

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        totals = super().finalize(results)
        assert self.derived_from is not None  # a blind copy is always derived from its poisoned folder
        record_blind_copy(self.derived_from, self.dst)
        return totals


def blind_job(src: Path, dst: Path, overwrite: bool = False) -> FolderJob:
    """The blind copy of the shard folder ``src`` into ``dst`` as a job (``run_job_local`` or a flow runs it)."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("input and output folders must differ: shards are never rewritten in place")
    shards = list_shards(src)
    if not shards:
        raise FileNotFoundError(f"no shards (NNNNN.tar) in {src}")
    source = BlindSource(str(src.resolve()), read_policy_for(src))
    return BlindJob(source, tuple(shards), dst, (), source_name=None, derived_from=src, overwrite=overwrite)


def added_samples(poisoned: Path) -> int:
    """How many samples of the poisoned folder an attack added (0 without a manifest): a blind copy cannot
    make them look like the source's own (their ``KEY.json`` has none of its fields), so the command says so."""
    path = manifest_path(Path(poisoned))
    if not path.is_file():
        return 0
    change = pq.read_table(path, columns=["change"]).column("change").to_pylist()
    return sum(1 for c in change if c == "added")


def record_blind_copy(poisoned: Path, copy: Path) -> None:
    """Add the copy's fingerprint to the poisoned folder's manifest: the manifest describes both folders
    (the same samples), so ``recall`` accepts scores computed on the copy and still refuses any other
    folder's. A poisoned folder without a manifest (nothing to measure) is left alone."""
    path = manifest_path(Path(poisoned))
    if not path.is_file():
        return
    known = table_fingerprints(path)
    added = dataset_fingerprint(Path(copy))
    if added in known:
        return
    write_manifest(Path(poisoned), with_fingerprints(pq.read_table(path), [*known, added]))
