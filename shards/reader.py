"""Reading shards without trusting them.

The tar is streamed member by member (never extracted, never unpickled): members are
grouped into samples by key as WebDataset does, and each sample is checked:

* only payload, ``.txt`` and ``.json`` members are read; anything else (``.pyd``, ``.pickle``,
  ``.pth``, links, devices, ...) quarantines the sample with a reason and its bytes are never even
  loaded (webdataset's default decoders would unpickle ``.pyd``/``.pickle`` and ``torch.load`` ``.pth``);
* member names with absolute paths, ``..`` or bytes that are not UTF-8 are refused (path traversal);
* duplicate keys, missing or non-UTF-8 captions, oversized members and image headers that are empty,
  undecodable or larger than the pixel cap are errors with a reason;
* a truncated or corrupt tar ends the stream with a shard-level error (also when it was cut exactly
  between two members, which ``tarfile`` takes for a normal end: see ``tarformat``), and rows of the input sidecar
  that never appeared in the tar (img2dataset's failed downloads, or samples lost to truncation) are
  carried forward as non-live samples, so every input row is accounted for.

Status and ``touched_by`` describe one pass: a sample read from a tar starts as "ok" again, while its
provenance (the ``poisonlab`` key of its ``.json``) travels with it from folder to folder.
"""

from __future__ import annotations

import dataclasses
import json
import lzma
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from poisonlab.pipelines.sample import Sample, Status
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, probe_image
from poisonlab.shards.layout import sidecar_path, tar_path
from poisonlab.shards.sidecar import printable
from poisonlab.shards.tarformat import TarFormatError, iter_members, open_stream

STAGE = "read"
# Non-image payloads that adapters may opt into (ReadPolicy(payload_extensions=...)); numpy loads them
# with allow_pickle=False, so they are never unpickled either.
ARRAY_PAYLOAD_EXTENSIONS = frozenset({"npz", "npy", "graph.npz"})
TEXT_EXTENSIONS = frozenset({"txt"})
META_EXTENSIONS = frozenset({"json"})
MAX_MEMBER_BYTES = 64 * 1024 * 1024
_READ_BUFFER = 1 << 20  # whole images per system call, not 8 KiB pieces


@dataclasses.dataclass(frozen=True)
class ReadPolicy:
    """What a reader accepts. Defaults fit image-caption pairs; adapters widen ``payload_extensions``."""

    payload_extensions: frozenset[str] = IMAGE_EXTENSIONS
    require_text: bool = True
    require_payload: bool = True
    max_caption_bytes: int = 64 * 1024
    max_meta_bytes: int = 1024 * 1024
    max_member_bytes: int = MAX_MEMBER_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    probe_images: bool = True

    def accepts(self, ext: str) -> bool:
        return ext in self.payload_extensions or ext in TEXT_EXTENSIONS or ext in META_EXTENSIONS

    def size_limit(self, ext: str) -> int:
        if ext in TEXT_EXTENSIONS:
            return self.max_caption_bytes
        if ext in META_EXTENSIONS:
            return self.max_meta_bytes
        return self.max_member_bytes


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


_CONTROL = re.compile(r"[\x00-\x1f]")


def unsafe_name(name: str) -> str | None:
    """Why a member name must not be used, or None (plain string tests: this runs for every member)."""
    if not name.isascii() and printable(name) != name:
        return "not valid UTF-8"
    if not name.isprintable() and _CONTROL.search(name):
        return "control character"
    path = name.replace("\\", "/") if "\\" in name else name
    if ".." in path and ".." in path.split("/"):
        return "parent directory"
    if path.startswith("/") or ":" in path.partition("/")[0]:
        return "absolute path"
    return None


class _Group:
    """The members of one key, as read so far."""

    __slots__ = ("key", "members", "problems")

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: dict[str, bytes] = {}
        self.problems: list[str] = []


def _iter_groups(path: Path, policy: ReadPolicy, report: ReadReport) -> Iterator[_Group]:
    """Members grouped by key, as WebDataset groups them (consecutive members sharing a key)."""

    parsed: dict[str, tuple[str, str, str | None]] = {}  # name -> (key, ext, why unsafe), for the loop

    def parse(name: str) -> tuple[str, str, str | None]:
        return (*split_member_name(name), unsafe_name(name))

    def wanted(name: str, kind: str, size: int) -> bool:  # refused or oversized data is never read
        parsed[name] = key_ext_why = parse(name)
        ext = key_ext_why[1]
        return key_ext_why[2] is None and policy.accepts(ext) and size <= policy.size_limit(ext)

    group: _Group | None = None
    try:
        with open(path, "rb", buffering=_READ_BUFFER) as raw, open_stream(raw) as stream:
            for member in iter_members(stream, wanted):
                if member.kind == "dir":
                    continue
                name = member.name
                key, ext, why_unsafe = parsed.pop(name, None) or parse(name)
                if why_unsafe:
                    key = printable(key)
                if group is None or key != group.key:
                    if group is not None:
                        yield group
                    group = _Group(key)
                if why_unsafe:
                    group.problems.append(f"unsafe_member_name: {printable(name)!r} ({why_unsafe})")
                elif member.kind != "file":
                    group.problems.append(f"refused_member: {name!r} is not a regular file")
                elif not policy.accepts(ext):
                    group.problems.append(f"refused_member: .{ext} (not payload, text or JSON; never decoded)")
                elif member.data is None:
                    kind = "caption_too_long" if ext in TEXT_EXTENSIONS else "member_too_large"
                    group.problems.append(f"{kind}: .{ext} is {member.size} bytes > {policy.size_limit(ext)}")
                else:
                    if ext in group.members:
                        group.problems.append(f"duplicate_member: {name!r}")
                    group.members[ext] = member.data
    except (TarFormatError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        report.shard_errors.append(f"truncated_or_corrupt_tar: {exc}")
        broken = getattr(exc, "member", None)
        if broken is not None:  # the member whose data was cut: its sample is the damaged one
            key = printable(split_member_name(broken)[0])
            if group is None or key != group.key:
                if group is not None:
                    yield group
                group = _Group(key)
            group.problems.append(f"truncated_tar: the shard ends inside {printable(broken)!r}")
        elif group is not None:  # cut between members: the last sample may have lost members
            group.problems.append("truncated_tar: the shard ends right after this sample")
    if group is not None:
        yield group


def _parse_meta(raw: bytes, problems: list[str]) -> dict[str, Any]:
    try:
        loaded = json.loads(raw.decode("utf-8"))
        if b"\\u" in raw:  # escapes can encode lone surrogates, which no UTF-8 file can hold
            json.dumps(loaded, ensure_ascii=False).encode("utf-8")
    except Exception as exc:  # bad UTF-8, bad JSON, or nesting deep enough to exhaust the recursion limit
        problems.append(f"invalid_json: {type(exc).__name__}")
        return {}
    return loaded if isinstance(loaded, dict) else {"value": loaded}


def _sample_from_group(group: _Group, policy: ReadPolicy) -> Sample:
    members = group.members
    problems = list(group.problems)
    payload_exts = [e for e in members if e in policy.payload_extensions]
    if len(payload_exts) > 1:
        problems.append("multiple_payloads: " + ", ".join(sorted(payload_exts)))
    raw_meta = members.get("json")
    meta = {} if raw_meta is None else _parse_meta(raw_meta, problems)
    text: str | None = None
    raw_text = members.get("txt")
    if raw_text is not None:
        try:
            text = raw_text.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"caption_not_utf8: invalid byte at position {exc.start}")
    elif policy.require_text and not any(p.startswith("caption_too_long") for p in problems):
        problems.append("missing_caption: no .txt member")
    payload_ext = min(payload_exts) if payload_exts else "jpg"
    payload = members[payload_ext] if payload_exts else None
    if payload is None and policy.require_payload:
        problems.append("missing_payload: no image or payload member")
    if not problems and payload is not None and policy.probe_images and payload_ext in IMAGE_EXTENSIONS:
        try:
            width, height = probe_image(payload, policy.max_pixels)
        except ImageError as exc:
            problems.append(str(exc))
        else:
            if meta.get("width") != width or meta.get("height") != height:
                meta = {**meta, "width": width, "height": height}
    if problems:
        return Sample(key=group.key, payload=payload, payload_ext=payload_ext, text=text, meta=meta,
                      status=Status.ERROR.value, reason=f"{STAGE}: " + "; ".join(problems))
    return Sample(key=group.key, payload=payload, payload_ext=payload_ext, text=text, meta=meta)


# Sidecar columns that describe a row rather than its sample's metadata (ours and img2dataset's).
_ROW_COLUMNS = frozenset({
    "key", "shard", "status", "reason", "error", "error_message", "caption", "sha256", "payload_ext", "bytes",
    "touched_by", "provenance",
})


def _carried_sample(row: dict[str, Any]) -> Sample:
    """A sidecar row with no tar member: a failed download upstream, or a sample lost to truncation."""
    status = str(row.get("status") or "")
    reason = row.get("reason") or row.get("error_message") or row.get("error") or status or "missing_from_tar"
    meta = {k: v for k, v in row.items() if k not in _ROW_COLUMNS and v is not None}
    if row.get("provenance"):
        try:
            meta["poisonlab"] = json.loads(row["provenance"])
        except ValueError:
            meta["poisonlab"] = row["provenance"]
    meta["source_status"] = status
    touched = tuple(str(row["touched_by"]).split(",")) if row.get("touched_by") else ()
    final = Status.DROPPED.value if status == Status.DROPPED.value else Status.ERROR.value
    # img2dataset marks good rows "success"; a good row that is not in the tar was lost to truncation.
    if status in ("success", Status.OK.value, Status.CHANGED.value, Status.ADDED.value):
        reason = f"{STAGE}: missing_from_tar: the sidecar lists this sample but the tar does not contain it"
    elif status not in (Status.DROPPED.value, Status.ERROR.value):
        reason = f"{status}: {reason}" if reason != status else status
    caption = row.get("caption")
    return Sample(key=str(row["key"]), payload=None, text=caption if isinstance(caption, str) else None,
                  meta=meta, status=final, reason=str(reason), touched_by=touched)


def _missing_rows(directory: Path, shard: str, seen: set[str], report: ReadReport) -> Iterator[Sample]:
    """Sidecar rows whose key never appeared in the tar (reads the full rows only when there are some)."""
    path = sidecar_path(directory, shard)
    if not path.exists():
        return
    try:
        keys = pq.read_table(path, columns=["key"]).column("key").cast("string")
        missing = pc.invert(pc.is_in(keys, value_set=pc.cast(list(seen) or [""], "string")))
        if not pc.any(missing).as_py():
            return
        rows = pq.read_table(path).filter(missing).to_pylist()
    except Exception as exc:  # an unreadable sidecar is the shard's problem, not a crash of the run
        report.shard_errors.append(f"unreadable_sidecar: {type(exc).__name__}: {exc}")
        return
    for row in rows:
        if row.get("key") is not None:
            yield _carried_sample(row)


def read_shard(
    directory: Path, shard: str, policy: ReadPolicy | None = None, report: ReadReport | None = None
) -> Iterator[Sample]:
    """Stream the samples of one shard, then the sidecar rows the tar did not contain, in sidecar order."""
    policy = policy or ReadPolicy()
    report = report if report is not None else ReadReport()
    seen: set[str] = set()
    path = tar_path(directory, shard)
    if not path.exists():
        report.shard_errors.append(f"missing_tar: {path.name}")
    else:
        for group in _iter_groups(path, policy, report):
            sample = _sample_from_group(group, policy)
            if sample.key in seen:
                sample = dataclasses.replace(
                    sample, status=Status.ERROR.value,
                    reason=f"{STAGE}: duplicate_key: {sample.key!r} appeared earlier in the shard",
                )
            seen.add(sample.key)
            yield sample
    yield from _missing_rows(directory, shard, seen, report)


def audit_tar(path: Path, policy: ReadPolicy | None = None) -> list[str]:
    """Problems that make a tar unsafe to hand to a plain WebDataset pipeline (empty when it is safe).

    ``webdataset``'s default decoders unpickle ``.pyd``/``.pickle`` members and ``torch.load`` ``.pth``
    ones, so a tool that trains straight from tars (open_clip) must only see tars that pass this check:
    every member a regular file with a safe name and an accepted extension. Headers only, no payloads.
    """
    policy = policy or ReadPolicy()
    problems: list[str] = []
    try:
        with open(path, "rb") as raw, open_stream(raw) as stream:
            for member in iter_members(stream, lambda name, kind, size: False):
                why = unsafe_name(member.name)
                if why:
                    problems.append(f"unsafe_member_name: {printable(member.name)!r} ({why})")
                elif member.kind == "other":
                    problems.append(f"refused_member: {member.name!r} is not a regular file")
                elif member.kind == "file" and not policy.accepts(split_member_name(member.name)[1]):
                    problems.append(f"refused_member: {member.name!r}")
    except (TarFormatError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        problems.append(f"truncated_or_corrupt_tar: {exc}")
    return problems
