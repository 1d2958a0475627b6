"""URL lists to poisonlab shards through img2dataset.

Three steps, each restartable:

1. **plan** (``prepare_ingest``): read and check the URL list (a malformed list fails here, before any
   download), decide which rows are never fetched (no URL, not HTTP, duplicate URL, empty caption,
   malformed expected hash) and write the plan as per-shard parquet parts in ``OUT/_ingest/parts``.
2. **download** (``download_staging``): img2dataset's own ``download`` (its processes and threads)
   fetches the parts into ``OUT/_ingest/staging``, in its webdataset layout. Rows are keyed by their
   position exactly as img2dataset keys them, and the hash img2dataset computes is of the downloaded
   bytes, before it resizes and re-encodes them.
3. **finalize** (``plan_ingest_tasks``): one shard task per part, on any runner, reads the staged shard
   with the safe reader, joins it to the plan by key and writes a poisonlab shard in key order: every
   plan row becomes one sidecar row (written, or failed with its reason), the expected and downloaded
   hashes are recorded, ``verify_hash`` turns mismatches into ``hash_mismatch`` rows, and the stats file
   is ours (img2dataset's ``{shard}_stats.json`` would otherwise be taken for our completion marker).

``ingest_job(plan)`` is steps 3 and 4 as one ``ShardJob``; its ``finalize`` writes ``sizes.json``, ``dataset.json`` and ``ingest.json`` and removes the staging area. A rerun of the
same ingest skips finished shards (ours) and downloaded ones (img2dataset's incremental mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.pipelines.visibility import TaskPaths
from poisonlab.shards.hashcheck import VerifyHash, VerifyHashParams
from poisonlab.shards.images import DEFAULT_MAX_PIXELS
from poisonlab.shards.layout import is_complete, sidecar_path, stats_path
from poisonlab.shards.parts import PartsJob, PartsPlan, PlanError, part_path, prepare_parts, read_part
from poisonlab.shards.plan import plan_source_tasks
from poisonlab.shards.reader import ReadPolicy, ReadReport, read_shard
from poisonlab.shards.urllists import (
    FETCH_URL,
    SKIP_REASON,
    SKIP_STATUS,
    UrlColumns,
    UrlListError,
    list_files,
    plan_table,
    read_url_list,
)

WORK_DIR = "_ingest"
RECORD = "ingest.json"
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")
# Plan columns that describe the row, not the sample: they do not go into the sample's metadata.
_PLAN_ONLY = frozenset({"key", "caption", FETCH_URL, SKIP_STATUS, SKIP_REASON})


class IngestError(PlanError):
    """An ingest that cannot start or continue (the output folder holds something else, a shard failed)."""


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    """How img2dataset fetches and resizes: its defaults, with fewer threads and a bounded pixel count."""

    image_size: int = 256
    resize_mode: str = "border"
    encode_format: str = "jpg"
    encode_quality: int = 95
    processes: int = 1
    threads: int = 64
    timeout: float = 10.0
    retries: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize_mode!r}; known: {', '.join(RESIZE_MODES)}")
        if self.encode_format not in ENCODE_FORMATS:
            raise ValueError(f"unknown encode format {self.encode_format!r}; known: {', '.join(ENCODE_FORMATS)}")
        if min(self.image_size, self.processes, self.threads, self.max_pixels) < 1 or self.timeout <= 0:
            raise ValueError("image size, processes, threads, pixel cap and timeout must be positive")

    def img2dataset_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``img2dataset.download`` these options set (shared with the benchmark)."""
        return {
            "image_size": self.image_size, "resize_mode": self.resize_mode, "encode_format": self.encode_format,
            "encode_quality": self.encode_quality, "processes_count": self.processes,
            "thread_count": self.threads, "timeout": self.timeout, "retries": self.retries,
            "max_image_area": self.max_pixels, "output_format": "webdataset", "enable_wandb": False,
        }

    def output_affecting(self) -> dict[str, Any]:
        """What changes the bytes written (so a resumed ingest must agree on it); not the parallelism."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("processes", "threads")}


@dataclasses.dataclass(frozen=True)
class IngestSpec:
    urls: Path
    out: Path
    columns: UrlColumns = UrlColumns()
    download: DownloadOptions = DownloadOptions()
    samples_per_shard: int = 10_000
    verify: bool = True  # with a hash column: refuse mismatches (False records both hashes, drops nothing)

    @property
    def verifies(self) -> bool:
        return bool(self.columns.hash) and self.verify

    def describe(self) -> dict[str, Any]:
        return {
            "urls": str(self.urls), "columns": dataclasses.asdict(self.columns),
            "download": self.download.output_affecting(), "samples_per_shard": self.samples_per_shard,
            "verify": self.verifies,
        }


@dataclasses.dataclass(frozen=True)
class IngestPlan(PartsPlan):
    spec: IngestSpec

    @property
    def staging(self) -> Path:
        return self.work / "staging"

    def pending(self) -> list[str]:
        """Shards not finished yet; raises if their plan is gone (a finished ingest that lost shards)."""
        pending = [s for s in self.shards if not is_complete(Path(self.spec.out), s)]
        if pending and not self.parts.is_dir():
            raise IngestError(f"{self.spec.out} lacks shards {pending[:3]} of a finished ingest; ingest into a new folder")
        return pending


def _fingerprint(spec: IngestSpec) -> str:
    """Identity of an ingest: the URL list's bytes and every option that changes the output."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in spec.describe().items() if k != "urls"},
                                       sort_keys=True).encode())
    for path in list_files(Path(spec.urls)):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def prepare_ingest(spec: IngestSpec) -> IngestPlan:
    """Check the URL list and write the plan; every problem with the list as a whole is raised here."""
    if spec.samples_per_shard < 1:
        raise UrlListError("samples per shard must be at least 1")
    return prepare_parts(IngestPlan, Path(spec.out), WORK_DIR, RECORD, _fingerprint(spec), spec.describe(),
                         lambda: plan_table(read_url_list(Path(spec.urls)), spec.columns, spec.verifies),
                         spec.samples_per_shard, spec=spec)


@contextlib.contextmanager
def img2dataset_environment(max_pixels: int) -> Iterator[None]:
    """Settings img2dataset's worker processes inherit.

    OpenCV refuses images above ``OPENCV_IO_MAX_IMAGE_PIXELS`` from their header, before allocating
    pixels (img2dataset's own ``max_image_area`` is checked only after a full decode); albumentations
    would otherwise ask PyPI for a newer version on every import.
    """
    wanted = {"OPENCV_IO_MAX_IMAGE_PIXELS": str(max_pixels), "NO_ALBUMENTATIONS_UPDATE": "1"}
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def redirect_output(log: Path | None) -> Iterator[None]:
    """img2dataset (and its worker processes) print progress on stdout: send it to stderr or a log file.

    Redirected at the file-descriptor level so that spawned processes inherit it, and stdout stays
    free for ``--json`` output.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log is not None else os.dup(2)
    try:
        os.dup2(target, 1)
        if log is not None:
            os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


@contextlib.contextmanager
def _own_sigint() -> Iterator[None]:
    """img2dataset installs a SIGINT handler that exits the process; put ours back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        raise IngestError("img2dataset must run in the main thread (it installs a signal handler)")
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def download_staging(plan: IngestPlan, log: Path | None = None) -> None:
    """Fetch every part not finished yet with ``img2dataset.download`` into the staging folder."""
    if not plan.pending():
        return
    spec = plan.spec
    plan.staging.mkdir(parents=True, exist_ok=True)
    with img2dataset_environment(spec.download.max_pixels):
        from img2dataset import download  # imported late: it pulls in torch, cv2 and albumentations

        with redirect_output(log), _own_sigint():
            download(
                url_list=str(plan.parts), output_folder=str(plan.staging), input_format="parquet",
                url_col=FETCH_URL, caption_col="caption", number_sample_per_shard=spec.samples_per_shard,
                compute_hash=spec.columns.hash_type, incremental_mode="incremental",
                **spec.download.img2dataset_kwargs(),
            )


def _decode_reason(message: str | None, max_pixels: int) -> str:
    """img2dataset's resize failures in the vocabulary of ``shards.images``."""
    message = message or "unknown"
    if "CV_IO_MAX_IMAGE_PIXELS" in message or message == "image area too large":
        return f"decode: decompression_bomb: the image exceeds the cap of {max_pixels} pixels"
    if message == "Image decoding error":
        return "decode: undecodable_image: OpenCV could not decode the body"
    return f"decode: {message}"


_URLOPEN = re.compile(r"^<urlopen error (.*)>$", re.DOTALL)


def _download_reason(message: str | None) -> str:
    """urllib's messages on one line, without the ``<urlopen error ...>`` wrapper."""
    text = " ".join((message or "unknown").split())
    match = _URLOPEN.match(text)
    return f"download: {match.group(1) if match else text}"


def _failure_reason(outcome: dict[str, Any] | None, max_pixels: int) -> str:
    if outcome is None:
        return "ingest: lost: img2dataset reported nothing for this row"
    status, message = outcome.get("status"), outcome.get("error_message")
    if status == "failed_to_download":
        return _download_reason(message)
    if status == "failed_to_resize":
        return _decode_reason(message, max_pixels)
    return f"ingest: unexpected img2dataset status {status!r}: {message}"


@dataclasses.dataclass(frozen=True)
class StagingSource:
    """The samples of one planned shard: img2dataset's staged results joined to the plan by key."""

    parts: str
    staging: str
    hash_type: str = "sha256"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        staging = Path(self.staging)
        if not stats_path(staging, shard).exists():
            raise IngestError(f"img2dataset did not finish shard {shard} (see its output); rerun the ingest to retry it")
        outcomes = {r["key"]: r for r in pq.read_table(sidecar_path(staging, shard)).to_pylist()}
        staged: dict[str, Sample] = {}
        policy = ReadPolicy(max_pixels=self.max_pixels)
        for sample in read_shard(staging, shard, policy, ReadReport(shard_errors=shard_errors)):
            if outcomes.get(sample.key, {}).get("status") == "success":
                staged.setdefault(sample.key, sample)
        planned = read_part(Path(self.parts), shard)
        for row in planned:
            yield self._sample(row, outcomes.get(row["key"]), staged.get(row["key"]))
        unplanned = set(outcomes) - {row["key"] for row in planned}
        if unplanned:
            shard_errors.append(f"unplanned_keys: img2dataset reported {len(unplanned)} keys the plan does not hold")

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(read=(self.parts, str(part_path(Path(self.parts), shard)), self.staging))

    def _sample(self, row: dict[str, Any], outcome: dict[str, Any] | None, staged: Sample | None) -> Sample:
        meta = {k: v for k, v in row.items() if k not in _PLAN_ONLY and v is not None}
        caption = row.get("caption")
        base = Sample(key=row["key"], payload=None, text=caption, meta=meta)
        if row.get(SKIP_STATUS):
            return dataclasses.replace(base, status=row[SKIP_STATUS], reason=row[SKIP_REASON])
        if outcome is None or outcome.get("status") != "success":
            return dataclasses.replace(base, status=Status.ERROR.value, reason=_failure_reason(outcome, self.max_pixels))
        if staged is None:
            return dataclasses.replace(base, status=Status.ERROR.value,
                                       reason="ingest: missing_from_tar: img2dataset reported success but wrote no image")
        if not staged.is_live:
            return dataclasses.replace(base, status=staged.status, reason=staged.reason)
        download_hash = outcome.get(self.hash_type)
        meta.update({
            f"download_{self.hash_type}": download_hash,
            "original_width": outcome.get("original_width"),
            "original_height": outcome.get("original_height"),
            "width": staged.meta.get("width"),
            "height": staged.meta.get("height"),
        })
        if outcome.get("exif") not in (None, "{}"):
            meta["exif"] = outcome["exif"]
        return dataclasses.replace(base, payload=staged.payload, payload_ext=staged.payload_ext,
                                   text=caption if caption is not None else "", meta=meta)


def plan_ingest_tasks(plan: IngestPlan) -> list[ShardTask]:
    """One task per planned shard: staged img2dataset output -> a poisonlab shard in ``OUT``."""
    spec = plan.spec
    source = StagingSource(str(plan.parts), str(plan.staging), spec.columns.hash_type, spec.download.max_pixels)
    stages = [VerifyHash(VerifyHashParams(hash_type=spec.columns.hash_type))] if spec.verifies else []
    return plan_source_tasks(source, list(plan.shards), Path(spec.out), stages, source_name=str(spec.urls))


def ingest_job(plan: IngestPlan) -> PartsJob:
    """The finalize step as a ``ShardJob``: one task per staged part, then ``sizes.json``, ``dataset.json``,
    ``ingest.json``, and the plan and staging area removed."""
    return PartsJob(plan, lambda: plan_ingest_tasks(plan))

