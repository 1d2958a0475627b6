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
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from poisonlab.pipelines.registry import get_registry
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, probe_image
from poisonlab.shards.keys import canonical_name, display_key, split_member_name, unsafe_name
from poisonlab.shards.layout import sidecar_path, tar_path
from poisonlab.shards.safe_open import open_regular
from poisonlab.shards.tarformat import TarMember
from poisonlab.shards.tarview import TarProblem, iter_tar, member_names

__all__ = ["ReadPolicy", "ReadReport", "audit_members", "audit_tar", "read_shard", "split_member_name", "unsafe_name"]

STAGE = "read"
# Non-image payloads that adapters may opt into (ReadPolicy(payload_extensions=...)); numpy loads them
# with allow_pickle=False, so they are never unpickled either.
ARRAY_PAYLOAD_EXTENSIONS = frozenset({"npz", "npy", "graph.npz"})
TEXT_EXTENSIONS = frozenset({"txt"})
META_EXTENSIONS = frozenset({"json"})
MAX_MEMBER_BYTES = 64 * 1024 * 1024


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
    # a registered payload check (registry kind ``payload_probe``, e.g. ``graph``) and its parameters:
    # it validates the payload under its caps and returns metadata fields (a graph's nodes and edges)
    payload_probe: str | None = None
    probe_params: tuple[tuple[str, int], ...] = ()

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
    # names of members past a tar problem, never read: each key still gets a row (``read_shard``)
    hidden_names: list[str] = dataclasses.field(default_factory=list)


class _Group:
    """The members of one key, as read so far."""

    __slots__ = ("key", "members", "problems")

    def __init__(self, key: str) -> None:
        self.key = key
        self.members: dict[str, bytes] = {}
        self.problems: list[str] = []


def _member_problem(member: TarMember, ext: str, why_unsafe: str | None, policy: ReadPolicy) -> str | None:
    if why_unsafe:
        return f"unsafe_member_name: {display_key(member.name)!r} ({why_unsafe})"
    if member.kind != "file":
        return f"refused_member: {display_key(member.name)!r} is not a regular file"
    if not policy.accepts(ext):
        return f"refused_member: .{ext} (not payload, text or JSON; never decoded)"
    if member.data is None:
        kind = "caption_too_long" if ext in TEXT_EXTENSIONS else "member_too_large"
        return f"{kind}: .{ext} is {member.size} bytes > {policy.size_limit(ext)}"
    return None


def _iter_groups(path: Path, policy: ReadPolicy, report: ReadReport,
                 keys: frozenset[str] | None = None) -> Iterator[_Group]:
    """Members grouped by key, as WebDataset groups them (consecutive members sharing a key). With ``keys``,
    other keys' members are passed over unread: their runs still end the group before them, as they would."""

    parsed: dict[str, tuple[str, str, str | None]] = {}  # name -> (key, ext, why unsafe), for the loop

    def parse(name: str) -> tuple[str, str, str | None]:
        name = canonical_name(name) if name.startswith("./") else name
        key, ext = split_member_name(name)
        why = unsafe_name(name)
        return (display_key(key) if why else key), ext, why

    def wanted(name: str, kind: str, size: int) -> bool:  # refused, oversized or unwanted data is never read
        parsed[name] = key_ext_why = parse(name)
        key, ext, why = key_ext_why
        return why is None and policy.accepts(ext) and size <= policy.size_limit(ext) and (keys is None or key in keys)

    group: _Group | None = None
    problems: list[TarProblem] = []
    for member in iter_tar(path, wanted, problems):
        if member.kind == "dir":
            continue
        key, ext, why_unsafe = parsed.pop(member.name, None) or parse(member.name)
        if keys is not None and key not in keys:
            if group is not None:
                yield group
            group = None
            continue
        if group is None or key != group.key:
            if group is not None:
                yield group
            group = _Group(key)
        problem = _member_problem(member, ext, why_unsafe, policy)
        if problem is None:
            if ext in group.members:
                problem = f"duplicate_member: {display_key(member.name)!r}"
            group.members[ext] = member.data  # type: ignore[assignment]
        if problem is not None:
            group.problems.append(problem)
    for problem in problems:
        group = yield from _damaged_group(group, problem, report)
    if group is not None:
        yield group


def _damaged_group(group: _Group | None, problem: TarProblem, report: ReadReport) -> Iterator[_Group]:
    """Record a tar problem: the sample it cut (or the last one read, which may have lost members) errs."""
    hidden = ", ".join(repr(display_key(n)) for n in problem.hidden[:5])
    more = f" and {len(problem.hidden) - 5} more" if len(problem.hidden) > 5 else ""
    report.shard_errors.append(str(problem) + (f"; members past it, never read: {hidden}{more}" if hidden else ""))
    report.hidden_names.extend(problem.hidden)
    label = "truncated_tar" if problem.kind == "truncated_or_corrupt_tar" else problem.kind
    if problem.member is not None:  # the member whose data was cut or refused: its sample is the damaged one
        key = display_key(split_member_name(canonical_name(problem.member))[0])
        if group is None or key != group.key:
            if group is not None:
                yield group
            group = _Group(key)
        group.problems.append(f"{label}: the shard ends inside {display_key(problem.member)!r}")
    elif group is not None:  # cut between members: the last sample may have lost members
        group.problems.append(f"{label}: the shard ends right after this sample")
    return group


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
    if not problems and payload is not None and policy.payload_probe is not None:
        meta = _probed(payload, policy, meta, problems)
    if problems:
        return Sample(key=group.key, payload=payload, payload_ext=payload_ext, text=text, meta=meta,
                      status=Status.ERROR.value, reason=f"{STAGE}: " + "; ".join(problems))
    return Sample(key=group.key, payload=payload, payload_ext=payload_ext, text=text, meta=meta)


@functools.lru_cache(maxsize=16)
def payload_probe(name: str, params: tuple[tuple[str, int], ...]) -> Callable[[bytes], dict[str, Any]]:
    """The registered payload check ``name`` with its caps (built once per process)."""
    return get_registry("payload_probe").create(name, dict(params))


def _probed(payload: bytes, policy: ReadPolicy, meta: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Run the policy's payload check: its fields overwrite what ``KEY.json`` claimed; a refusal is a problem."""
    try:
        fields = payload_probe(policy.payload_probe, policy.probe_params)(payload)  # type: ignore[arg-type]
    except ValueError as exc:
        problems.append(str(exc))
        return meta
    return meta if all(meta.get(k) == v for k, v in fields.items()) else {**meta, **fields}


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


def _missing_rows(directory: Path, shard: str, seen: set[str], report: ReadReport,
                  keys: frozenset[str] | None = None) -> Iterator[Sample]:
    """Sidecar rows whose key never appeared in the tar (only ``keys``, when given; reads the full rows only
    when there are some)."""
    path = sidecar_path(directory, shard)
    if not (path.exists() or path.is_symlink()):
        return
    try:
        with open_regular(path) as fh:
            sidecar = pq.ParquetFile(fh)
            column = sidecar.read(columns=["key"]).column("key").cast("string")
            missing = pc.invert(pc.is_in(column, value_set=pc.cast(list(seen) or [""], "string")))
            if keys is not None:
                missing = pc.and_(missing, pc.is_in(column, value_set=pc.cast(list(keys) or [""], "string")))
            if not pc.any(missing).as_py():
                return
            rows = sidecar.read().filter(missing).to_pylist()
    except Exception as exc:  # an unreadable sidecar is the shard's problem, not a crash of the run
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        report.shard_errors.append(f"unreadable_sidecar: {detail}")
        return
    for row in rows:
        if row.get("key") is not None:
            seen.add(str(row["key"]))
            yield _carried_sample(row)


def _hidden_samples(report: ReadReport, seen: set[str]) -> Iterator[Sample]:
    """A row for every key found only past a tar problem (in no sidecar): never read, never handed on."""
    for raw in report.hidden_names:
        name = canonical_name(raw)
        key = split_member_name(name)[0]
        key = display_key(key) if unsafe_name(name) else key
        if key in seen:
            continue
        seen.add(key)
        yield Sample(key=key, payload=None, status=Status.ERROR.value,
                     reason=f"{STAGE}: hidden_member: {display_key(raw)!r} lies past a problem in the shard's "
                            "tar and was never read")


def read_shard(
    directory: Path, shard: str, policy: ReadPolicy | None = None, report: ReadReport | None = None,
    keys: frozenset[str] | None = None,
) -> Iterator[Sample]:
    """Stream the samples of one shard, then the sidecar rows the tar did not contain, in sidecar order,
    then a row for each key that only a reader resynchronising past a tar problem would find.

    ``keys`` keeps only those samples (a federated client's share of shared shards): the others' data is
    never read, and each kept sample is what an unfiltered read gives for it. Shard problems are reported
    whatever the keys."""
    policy = policy or ReadPolicy()
    report = report if report is not None else ReadReport()
    seen: set[str] = set()
    path = tar_path(directory, shard)
    if not (path.exists() or path.is_symlink()):
        report.shard_errors.append(f"missing_tar: {path.name}")
    else:
        for group in _iter_groups(path, policy, report, keys):
            sample = _sample_from_group(group, policy)
            if sample.key in seen:
                sample = dataclasses.replace(
                    sample, status=Status.ERROR.value,
                    reason=f"{STAGE}: duplicate_key: {sample.key!r} appeared earlier in the shard",
                )
            seen.add(sample.key)
            if keys is None or sample.key in keys:  # a damaged group is named after the member a problem cut
                yield sample
    yield from _missing_rows(directory, shard, seen, report, keys)
    yield from (s for s in _hidden_samples(report, seen) if keys is None or s.key in keys)


def audit_tar(path: Path, policy: ReadPolicy | None = None) -> list[str]:
    """Problems that make a tar unsafe to hand to a plain WebDataset pipeline (empty when it is safe).

    ``webdataset``'s default decoders unpickle ``.pyd``/``.pickle`` members and ``torch.load`` ``.pth``
    ones, so a tool that trains straight from tars (open_clip) must only see tars that pass this check:
    every member a regular file with a safe name and an accepted extension, and nothing ``tarfile`` would
    read differently from poisonlab (the shared view of ``tarview``; members hidden past a problem are
    listed by name). Headers only, no payloads.
    """
    return audit_members(*member_names(path), policy or ReadPolicy())


def audit_members(members: list[TarMember], tar_problems: list[TarProblem], policy: ReadPolicy) -> list[str]:
    """``audit_tar`` on members already listed (``stats`` lists each tar once for several checks)."""
    problems: list[str] = []
    for member in members:
        why = unsafe_name(canonical_name(member.name))
        if why:
            problems.append(f"unsafe_member_name: {display_key(member.name)!r} ({why})")
        elif member.kind == "other":
            problems.append(f"refused_member: {member.name!r} is not a regular file")
        elif member.kind == "file" and not policy.accepts(split_member_name(member.name)[1]):
            problems.append(f"refused_member: {member.name!r}")
    for problem in tar_problems:
        problems.append(str(problem))
        problems += [f"hidden_member: {display_key(name)!r} lies past the problem" for name in problem.hidden]
    return problems
