"""Output guards: no command writes into a folder holding another kind of poisonlab output, or into its input.

Shard folders, score tables, embedding stores and manifests share file names (``NNNNN.parquet`` is a
sidecar in one and a score table in another), so a guard that looks for ``.tar`` files lets ``clean``
overwrite score tables. Each command's output folder instead gets a small kind record,
``poisonlab.json`` = ``{"kind": ...}``, written when the command succeeds; a folder written before that
record existed (or by a killed run) is recognised by the records its kind always writes (``attack.json``,
``scan.json``, an embedding store's ``model.json``, a run's ``model_config.json``, shard markers, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from poisonlab.shards.layout import RUN_DIR, atomic_write_json

KIND_FILE = "poisonlab.json"
_DIGITS = re.compile(r"^\d{5,}$")

# (a file whose presence says the kind, the kind), most specific first
_RECORDS: tuple[tuple[str, str], ...] = (
    ("experiment.json", "experiment"),
    ("train_summary.json", "run"),
    ("train_state.json", "run"),
    ("model_config.json", "run"),
    ("model.safetensors", "run"),
    ("scan.json", "scores"),
    ("recall.json", "recall"),
    ("partition.json", "partition"),
    ("model.json", "embeddings"),
    ("_run/exclusions.parquet", "cleaned"),
    ("exclusions.parquet", "cleaned"),  # a cleaned folder written before run tables moved into _run/
    ("clean.json", "cleaned"),
    ("urls.parquet", "splitview"),
    ("ingest.json", "shards"),
    ("import.json", "shards"),
    ("dataset.json", "shards"),
)


class OutputGuardError(ValueError):
    """The output folder is an input, a file, or holds another kind of output."""


def _recorded_kind(folder: Path) -> str | None:
    path = folder / KIND_FILE
    if not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return kind if isinstance(kind, str) else "unreadable"


def _shards_kind(names: set[str]) -> str | None:
    """Shard markers say shards; digit-named parquet files without tars are score tables."""
    if any(n.endswith("_stats.json") or n.endswith(".tar") for n in names) or "sizes.json" in names:
        return "shards"
    if any(n.endswith(".parquet") and _DIGITS.match(n[: -len(".parquet")]) for n in names):
        return "scores"
    return None


def folder_kind(folder: Path) -> str | None:
    """The kind of poisonlab output ``folder`` holds, by its own records; None for a new or foreign folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    recorded = _recorded_kind(folder)
    if recorded is not None:
        return recorded
    names = {p.name for p in folder.iterdir()}
    run_dir = folder / RUN_DIR
    if run_dir.is_dir() and not run_dir.is_symlink():  # run-level tables (shards.layout.RUN_DIR), by relative path
        names |= {f"{RUN_DIR}/{p.name}" for p in run_dir.iterdir()}
    if "attack.json" in names:
        manifest = {"manifest.parquet", f"{RUN_DIR}/manifest.parquet"} & names
        return "triggered_eval" if "classes.json" in names and not manifest else "poisoned"
    for name, kind in _RECORDS:
        if name in names:
            return kind
    if any((p / "model.json").is_file() for p in folder.iterdir() if p.is_dir()):
        return "embeddings"  # an embedding root: OUT/<model_id>/model.json
    return _shards_kind(names)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output(out: Path, kind: str, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse, before any work, an output that is a file, one of the inputs, or another kind's folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputGuardError(f"--out {out} is an existing file, not a folder")
    for source in inputs:
        if source is not None and _same(out, Path(source)):
            raise OutputGuardError(f"--out {out} is also an input of this command; write to another folder")
    existing = folder_kind(out)
    if existing is not None and existing != kind:
        raise OutputGuardError(f"{out} holds {existing.replace('_', ' ')} output, not {kind.replace('_', ' ')}; "
                               "use another --out folder")


def record_output(out: Path, kind: str) -> None:
    """Leave the kind record once the command has written its output (no paths: bytes stay reproducible).

    Plain shard folders get none: their completion markers already say what they are, and their file set
    stays exactly what every writer of shards produces (runs are compared file by file).
    """
    if kind != "shards" and Path(out).is_dir() and _recorded_kind(Path(out)) != kind:
        atomic_write_json(Path(out) / KIND_FILE, {"kind": kind})
