"""Local folders to poisonlab shards: images with captions from a table, or from ``.txt`` files beside them.

The inputs are the image files under a folder and, with a captions table, every file the table names.
They are taken in sorted order of their path relative to the folder, so the keys (img2dataset's layout,
by position) are the same on every machine and every run. Images are stored as they are (no
re-encoding) after a full decode under the pixel cap; an input that cannot become a sample (no such
file, not an image, no caption, an empty caption, a path leaving the folder) is a sidecar row with its
reason.

Inputs are read only from inside the folder: nothing is followed out of it (``folder_scan``,
``safe_open``). A symbolic link, FIFO, device or socket with an image name, and a symbolic link to a
directory, is a row with reason ``unsafe_file``; a caption file that is one is ``unsafe_caption``; a
regular file with hard links is read only when all its links are inside the folder. Every file is
opened with ``O_NOFOLLOW`` through its directories one by one and checked on the open descriptor, so
swapping a name for a link between the scan and the read does not lead out either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa

from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.sample import Sample, Status
from poisonlab.pipelines.visibility import TaskPaths
from poisonlab.shards.folder_scan import FolderScan, scan_folder
from poisonlab.shards.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image
from poisonlab.shards.parts import PartsJob, PartsPlan, part_path, prepare_parts, read_part
from poisonlab.shards.plan import plan_source_tasks
from poisonlab.shards.reader import MAX_MEMBER_BYTES, ReadPolicy
from poisonlab.shards.safe_open import UnsafeFileError, open_inside, read_capped
from poisonlab.shards.sidecar import SIDECAR_COLUMNS
from poisonlab.shards.urllists import UrlListError, extra_name, read_url_list

WORK_DIR = "_import"
RECORD = "import.json"
STAGE = "import"
FILE = "source_file"
INODE = "_source_inode"  # plan-only column: a multi-link file's (device, inode) whose links are all inside
_INTERNAL = ("key", "caption", "skip_status", "skip_reason", INODE)
MAX_CAPTION_BYTES = ReadPolicy().max_caption_bytes


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    images: Path
    out: Path
    captions: Path | None = None  # a table (csv, tsv, parquet, jsonl) naming files; else FILE.txt beside each image
    file_col: str = "file"
    caption_col: str = "caption"
    samples_per_shard: int = 10_000
    max_pixels: int = DEFAULT_MAX_PIXELS

    def describe(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def scan_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` that may be read, sorted (links not followed)."""
    return scan_folder(root).images()


def _safe_relative(value: Any) -> str | None:
    """A captions-table path as a relative POSIX path inside the folder, or None if it would leave it."""
    if not isinstance(value, str) or not value.strip():
        return None
    path = PurePosixPath(value.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or ":" in value:
        return None
    return path.as_posix()


def _captions_from_table(spec: ImportSpec) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Rows of the captions table by relative path, plus rows that cannot name a file in the folder."""
    table = read_url_list(Path(spec.captions), what="captions table")  # type: ignore[arg-type]
    missing = [c for c in (spec.file_col, spec.caption_col) if c not in table.column_names]
    if missing:
        raise UrlListError(f"the captions table has no column {' or '.join(map(repr, missing))}; "
                           f"its columns are {', '.join(table.column_names)}")
    taken = {FILE, "caption", "skip_status", "skip_reason", "key", *SIDECAR_COLUMNS}
    renames = {}
    for name in table.column_names:
        if name not in (spec.file_col, spec.caption_col):
            renames[name] = extra_name(name, taken)
            taken.add(renames[name])
    by_path: dict[str, dict[str, Any]] = {}
    refused: list[dict[str, Any]] = []
    for record in table.to_pylist():
        row = {"caption": None if record[spec.caption_col] is None else str(record[spec.caption_col])}
        row.update((renames[k], v) for k, v in record.items() if k in renames)
        path = _safe_relative(record[spec.file_col])
        if path is None:
            refused.append({**row, FILE: str(record[spec.file_col]), "skip_status": Status.ERROR.value,
                            "skip_reason": f"{STAGE}: unsafe_path: not a relative path inside the image folder"})
        elif path in by_path:
            refused.append({**row, FILE: path, "skip_status": Status.DROPPED.value,
                            "skip_reason": f"{STAGE}: duplicate_file: the captions table names this file twice"})
        else:
            by_path[path] = row
    return by_path, refused


def _caption_beside(scan: FolderScan, rel: str) -> tuple[str | None, str | None]:
    txt = rel.rpartition(".")[0] + ".txt"
    try:
        with open_inside(scan.root, txt, scan.shared_inodes) as fh:
            raw = read_capped(fh, MAX_CAPTION_BYTES, txt)
    except FileNotFoundError:
        return None, f"{STAGE}: missing_caption: no {PurePosixPath(txt).name} beside the image"
    except UnsafeFileError as exc:
        return None, f"{STAGE}: unsafe_caption: {exc.strerror}"
    except OSError as exc:
        return None, f"{STAGE}: unreadable_caption: {exc.strerror or type(exc).__name__}"
    try:
        return raw.decode("utf-8").strip(), None
    except UnicodeDecodeError as exc:
        return None, f"{STAGE}: caption_not_utf8: invalid byte at position {exc.start}"


def _skip(row: dict[str, Any], status: str, reason: str) -> None:
    row["skip_status"], row["skip_reason"] = status, reason


def _plan_row(spec: ImportSpec, scan: FolderScan, rel: str, listed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plan row of one input path: a sample to read, or the reason it cannot be one."""
    row: dict[str, Any] = {FILE: rel, "caption": None, "skip_status": None, "skip_reason": None, INODE: None}
    if rel in scan.unsafe:
        row.update(listed.get(rel) or {})
        _skip(row, Status.ERROR.value, f"{STAGE}: unsafe_file: {rel} is {scan.unsafe[rel]}")
        return row
    reason = None
    if spec.captions:
        row.update(listed.get(rel) or {})
        if rel not in listed:
            reason = f"{STAGE}: missing_caption: the captions table does not name this image"
    else:
        row["caption"], reason = _caption_beside(scan, rel)
    if rel not in scan.readable_images:
        reason = (f"{STAGE}: unsupported_image_format: not one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
                  if scan.is_regular(rel) else f"{STAGE}: missing_image: no such file in the folder")
    elif scan.entries[rel].st_nlink > 1:
        row[INODE] = f"{scan.entries[rel].st_dev}:{scan.entries[rel].st_ino}"
    if reason is None and not (row["caption"] or "").strip():
        _skip(row, Status.DROPPED.value, f"{STAGE}: empty_caption: nothing to pair the image with")
    elif reason is not None:
        _skip(row, Status.ERROR.value, reason)
    return row


def plan_import(spec: ImportSpec) -> pa.Table:
    """One plan row per input, in sorted path order; rows that cannot become samples carry their reason."""
    root = Path(spec.images)
    if not root.is_dir():
        raise UrlListError(f"image folder {root} does not exist")
    scan = scan_folder(root)
    listed, refused = _captions_from_table(spec) if spec.captions else ({}, [])
    inputs = scan.readable_images | set(listed) | set(scan.unsafe)
    rows = [_plan_row(spec, scan, rel, listed) for rel in sorted(inputs)]
    rows += sorted(refused, key=lambda r: r[FILE])
    if not rows:
        raise UrlListError(f"no images in {root}" + (" and no rows in the captions table" if spec.captions else ""))
    names = list(dict.fromkeys(k for row in rows for k in row))  # from_pylist would keep the first row's only
    return pa.table({name: [row.get(name) for row in rows] for name in names})


@dataclasses.dataclass(frozen=True)
class ImportSource:
    """The samples of one planned shard, read from the image folder."""

    parts: str
    root: str
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __call__(self, shard: str, shard_errors: list[str]) -> Iterator[Sample]:
        for row in read_part(Path(self.parts), shard):
            yield self._sample(row)

    def needed_paths(self, shard: str) -> TaskPaths:
        return TaskPaths(read=(self.parts, str(part_path(Path(self.parts), shard)), self.root))

    def _sample(self, row: dict[str, Any]) -> Sample:
        meta = {k: v for k, v in row.items() if k not in _INTERNAL and v is not None}
        base = Sample(key=row["key"], text=row["caption"], meta=meta)
        if row["skip_status"]:
            return dataclasses.replace(base, status=row["skip_status"], reason=row["skip_reason"])
        rel = row[FILE]
        inode = row.get(INODE)
        allowed = {tuple(int(n) for n in inode.split(":"))} if inode else set()
        try:
            with open_inside(self.root, rel, allowed) as fh:  # type: ignore[arg-type]
                size = os.fstat(fh.fileno()).st_size
                if size > MAX_MEMBER_BYTES:
                    return base.errored(STAGE, f"file_too_large: {size} bytes")
                payload = read_capped(fh, MAX_MEMBER_BYTES, rel)
            with decode_image(payload, self.max_pixels) as image:
                width, height = image.size
        except ImageError as exc:
            return base.errored(STAGE, str(exc))
        except UnsafeFileError as exc:
            return base.errored(STAGE, f"unsafe_file: {exc.strerror}")
        except OSError as exc:
            return base.errored(STAGE, f"unreadable_file: {exc.strerror or type(exc).__name__}")
        ext = rel.rpartition(".")[2].lower()
        return dataclasses.replace(base, payload=payload, payload_ext=ext, text=row["caption"].strip(),
                                   meta={**meta, "width": width, "height": height})


def fingerprint_import(spec: ImportSpec) -> str:
    """Identity of an import: the options, the captions table's bytes and every file's name, size and time."""
    digest = hashlib.sha256(json.dumps(spec.describe() | {"out": None}, sort_keys=True).encode())
    root = Path(spec.images)
    for folder, dirs, files in sorted(os.walk(root, followlinks=False)):
        dirs.sort()
        for name in sorted(files):
            st = (Path(folder) / name).lstat()
            digest.update(f"{Path(folder, name).relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if spec.captions and Path(spec.captions).is_file():
        digest.update(Path(spec.captions).read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ImportPlan(PartsPlan):
    spec: ImportSpec


def prepare_import(spec: ImportSpec) -> ImportPlan:
    """Write the plan, or find the saved one of this same import; problems with the inputs raise here."""
    return prepare_parts(ImportPlan, Path(spec.out), WORK_DIR, RECORD, fingerprint_import(spec), spec.describe(),
                         lambda: plan_import(spec), spec.samples_per_shard, spec=spec)


def plan_import_tasks(plan: ImportPlan) -> list[ShardTask]:
    source = ImportSource(str(plan.parts), str(plan.spec.images), plan.spec.max_pixels)
    return plan_source_tasks(source, list(plan.shards), Path(plan.spec.out), source_name=str(plan.spec.images))


def import_job(plan: ImportPlan) -> PartsJob:
    """The import as a ``ShardJob``: one task per part, then ``sizes.json``, ``dataset.json``, ``import.json``."""
    return PartsJob(plan, lambda: plan_import_tasks(plan))

