"""Reading shards without trusting them.

The tar is streamed member by member with ``tarfile`` (never extracted, never unpickled): members are
grouped into samples by key as WebDataset does, and each sample is checked:

* only payload, ``.txt`` and ``.json`` members are accepted; anything else (``.pyd``, ``.pickle``,
  ``.pth``, ...) quarantines the sample with a reason instead of being decoded;
* member names with absolute paths or ``..`` are refused (path traversal);
* duplicate keys, missing or non-UTF-8 captions, oversized captions and image headers that are empty,
  undecodable or larger than the pixel cap are errors with a reason;
* a truncated tar ends the stream with a shard-level error, and rows of the input sidecar that never
  appeared in the tar (img2dataset's failed downloads, or samples lost to truncation) are carried
  forward as non-live samples, so every input row is accounted for.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from poisonlab.pipelines.sample import Sample, Status
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, probe_image
from poisonlab.shards.layout import sidecar_path, tar_path

STAGE = "read"
# Non-image payloads that adapters may carry; none of them is ever unpickled (numpy loads them with
# allow_pickle=False).
OTHER_PAYLOAD_EXTENSIONS = frozenset({"npz", "npy", "graph.npz"})
TEXT_EXTENSIONS = frozenset({"txt"})
META_EXTENSIONS = frozenset({"json"})
MAX_MEMBER_BYTES = 64 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ReadPolicy:
    """What a reader accepts. Defaults fit image-caption pairs; adapters widen ``payload_extensions``."""

    payload_extensions: frozenset[str] = IMAGE_EXTENSIONS | OTHER_PAYLOAD_EXTENSIONS
    require_text: bool = True
    require_payload: bool = True
    max_caption_bytes: int = 64 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    probe_images: bool = True


@dataclasses.dataclass
class ReadReport:
    """Shard-level problems found while reading (the per-sample ones travel with the samples)."""

    shard_errors: list[str] = dataclasses.field(default_factory=list)


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return name, ""
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _unsafe_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or any(":" in p for p in parts[:1])


class _Group:
    __slots__ = ("key", "members", "problems")

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: dict[str, bytes] = {}
        self.problems: list[str] = []


def _iter_groups(path: Path, report: ReadReport) -> Iterator[_Group]:
    group: _Group | None = None
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if group is None or key != group.key:
                    if group is not None:
                        yield group
                    group = _Group(key)
                if _unsafe_name(info.name):
                    group.problems.append(f"unsafe_member_name: {info.name!r}")
                    continue
                if info.size > MAX_MEMBER_BYTES:
                    group.problems.append(f"member_too_large: {info.name!r} is {info.size} bytes")
                    continue
                fh = tar.extractfile(info)
                data = fh.read() if fh is not None else b""
                if ext in group.members:
                    group.problems.append(f"duplicate_member: {info.name!r}")
                group.members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        report.shard_errors.append(f"truncated_or_corrupt_tar: {type(exc).__name__}: {exc}")
        if group is not None:
            group.problems.append("truncated_tar: the shard ended inside this sample")
    if group is not None:
        yield group


def _sample_from_group(group: _Group, policy: ReadPolicy) -> Sample:
    members = group.members
    problems = list(group.problems)
    payload_exts = [e for e in members if e in policy.payload_extensions]
    refused = [e for e in members if e not in policy.payload_extensions | TEXT_EXTENSIONS | META_EXTENSIONS]
    if refused:
        problems.append("refused_member: " + ", ".join(f".{e}" for e in sorted(refused)) + " (not payload, text or JSON)")
    if len(payload_exts) > 1:
        problems.append("multiple_payloads: " + ", ".join(sorted(payload_exts)))
    meta: dict[str, Any] = {}
    if "json" in members:
        try:
            loaded = json.loads(members["json"].decode("utf-8"))
            meta = loaded if isinstance(loaded, dict) else {"value": loaded}
        except (UnicodeDecodeError, ValueError) as exc:
            problems.append(f"invalid_json: {exc}")
    text: str | None = None
    if "txt" in members:
        raw = members["txt"]
        if len(raw) > policy.max_caption_bytes:
            problems.append(f"caption_too_long: {len(raw)} bytes > {policy.max_caption_bytes}")
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"caption_not_utf8: {exc}")
    elif policy.require_text:
        problems.append("missing_caption: no .txt member")
    payload_ext = payload_exts[0] if payload_exts else "jpg"
    payload = members.get(payload_ext) if payload_exts else None
    if payload is None and policy.require_payload:
        problems.append("missing_payload: no image or payload member")
    if payload is not None and payload_ext in IMAGE_EXTENSIONS and policy.probe_images and not problems:
        try:
            width, height = probe_image(payload, policy.max_pixels)
            if meta.get("width") != width or meta.get("height") != height:
                meta = {**meta, "width": width, "height": height}
        except ImageError as exc:
            problems.append(str(exc))
    sample = Sample(key=group.key, payload=payload, payload_ext=payload_ext, text=text, meta=meta)
    if problems:
        return dataclasses.replace(sample, status=Status.ERROR.value, reason=f"{STAGE}: " + "; ".join(problems))
    return sample


def _sidecar_rows(directory: Path, shard: str) -> list[dict[str, Any]]:
    path = sidecar_path(directory, shard)
    if not path.exists():
        return []
    table = pq.read_table(path)
    return table.to_pylist()


_CARRY_COLUMNS = ("status", "reason", "error", "key", "caption", "shard", "sha256", "width", "height", "payload_ext", "bytes")


def _carried_sample(row: dict[str, Any]) -> Sample:
    """A sidecar row with no tar member: a failed download upstream, or a sample lost to truncation."""
    status = str(row.get("status") or "")
    reason = row.get("reason") or row.get("error") or status or "missing_from_tar"
    meta = {k: v for k, v in row.items() if k not in _CARRY_COLUMNS and v is not None}
    meta["source_status"] = status
    # img2dataset marks good rows "success"; a good row that is not in the tar was lost to truncation.
    final = Status.DROPPED.value if status == Status.DROPPED.value else Status.ERROR.value
    if status in ("success", Status.OK.value, Status.CHANGED.value, Status.ADDED.value):
        reason = "missing_from_tar: the sidecar lists this sample but the tar does not contain it"
    elif status not in (Status.DROPPED.value, Status.ERROR.value):
        reason = f"{status}: {reason}" if reason != status else status
    return Sample(key=str(row["key"]), payload=None, text=row.get("caption"), meta=meta, status=final, reason=reason)


def read_shard(
    directory: Path, shard: str, policy: ReadPolicy | None = None, report: ReadReport | None = None
) -> Iterator[Sample]:
    """Stream the samples of one shard, then the sidecar rows the tar did not contain, in sidecar order."""
    policy = policy or ReadPolicy()
    report = report if report is not None else ReadReport()
    seen: set[str] = set()
    path = tar_path(directory, shard)
    if not path.exists():
        report.shard_errors.append(f"missing_tar: {path}")
    else:
        for group in _iter_groups(path, report):
            sample = _sample_from_group(group, policy)
            if sample.key in seen:
                sample = dataclasses.replace(
                    sample, status=Status.ERROR.value, reason=f"{STAGE}: duplicate_key: {sample.key!r} appeared earlier in the shard"
                )
            seen.add(sample.key)
            yield sample
    for row in _sidecar_rows(directory, shard):
        if str(row.get("key")) not in seen:
            yield _carried_sample(row)
