"""Run detectors over an embedding store and write the score tables.

The global step happens once: all embeddings are loaded, each neighbour graph is built with one index over
the whole dataset (FAISS parallelises its search over the machine's cores), and then the tables are written
shard by shard. The loaded vectors are spilled to a temporary folder (``TMPDIR``) and memory-mapped, and the
detectors read them block by block, releasing the pages they touched: the driver does not hold them (at a
million 128-d vectors, half a gigabyte), and the scores are the same bytes as from vectors in memory.

With an index memory budget (``index_memory``, or ``index.memory`` per detector) the index is chosen to
fit it and, when it does not fit one worker, split into index shards: searched one after another in this
process, or one per Dask worker when a shard runner is given (``flows/knn_dask.py``); the chosen codes,
shards, memory estimate and sampled recall@k go into ``scan.json`` under ``graphs``.

Detector specs map a column name to parameters; two keys are reserved: ``detector`` (the registered
name, when the column is named otherwise, e.g. ``{"kdist_k5": {"detector": "kdist", "k": 5}}``) and
``embeddings`` (which store, when several are given, e.g. a reference model for ``clip_score``).

Detectors declare their inputs, and the scan checks them before loading anything: the embedding spaces
each one reads must be in its store (a one-line error names the missing space and the spaces there are),
and the score columns a combining detector uses (``ensemble``) must be computed by this scan, which
orders detectors so that those columns come first.

``scan.json`` records ``dataset``, the shard folder the scores describe (the one the primary store
embedded, with its fingerprint); every store of a scan must have embedded that same folder.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from poisonlab.filters.budget import parse_bytes
from poisonlab.filters.context import ScanContext
from poisonlab.filters.corpus import Corpus, load_corpus
from poisonlab.filters.detectors import DETECTORS, Detector
from poisonlab.filters.index import IndexParams
from poisonlab.filters.scores import (
    EMBEDDED_PREFIX,
    SCAN_FILE,
    is_base_column,
    list_score_shards,
    score_path,
    write_score_shard,
)
from poisonlab.filters.sharded_knn import ShardRunner
from poisonlab.filters.specs import parse_spec
from poisonlab.filters.store import StoreInfo, read_info
from poisonlab.pipelines.registry import RegistryError
from poisonlab.shards.fingerprint import DatasetRef, check_same_dataset
from poisonlab.shards.layout import atomic_write_json

RESERVED = ("detector", "embeddings")
DEFAULT_DETECTORS: dict[str, dict[str, Any]] = {"default": {}}  # filters/default.py: needs no knowledge of the attack


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    column: str
    name: str
    params: BaseModel
    embeddings: str | None = None

    def create(self) -> Detector:
        return DETECTORS.get(self.name).create(self.params)

    def describe(self) -> dict[str, Any]:
        return {"detector": self.name, "params": self.params.model_dump(mode="json"), "embeddings": self.embeddings}


def detector_specs(detectors: Mapping[str, Mapping[str, Any] | None] | Sequence[str]) -> list[DetectorSpec]:
    """Validate every detector and its parameters before any work starts."""
    if not isinstance(detectors, Mapping):
        parsed: dict[str, dict[str, Any]] = {}
        for text in detectors:
            column, name, params = parse_spec(text)
            if column in parsed:
                raise ValueError(f"two detectors write the column {column!r}; name one `other=NAME:...`")
            parsed[column] = {**params, "detector": name} if name != column else params
        detectors = parsed
    if not detectors:
        raise ValueError("no detectors given")
    specs = []
    for column, raw in detectors.items():
        raw = dict(raw or {})
        name = str(raw.pop("detector", column))
        embeddings = raw.pop("embeddings", None)
        if is_base_column(column):
            raise ValueError(f"{column!r} is a reserved column name")
        component = DETECTORS.get(name)
        specs.append(DetectorSpec(column, name, component.parse(raw), embeddings))
    columns = {s.column for s in specs}
    for spec in specs:
        missing = [u for u in spec.create().uses if u not in columns]
        if missing:
            raise RegistryError(f"{spec.name} {spec.column!r} combines {missing}, which this scan does not compute")
    return specs


def with_index_memory(specs: list[DetectorSpec], memory: str | None) -> list[DetectorSpec]:
    """Give every detector with index settings and no budget of its own the scan's ``index_memory``
    (recorded in its parameters, so ``scan.json`` says which budget produced the scores)."""
    if memory is None:
        return specs
    parse_bytes(memory)  # a one-line error before any work
    out = []
    for spec in specs:
        index = getattr(spec.params, "index", None)
        if isinstance(index, IndexParams) and index.memory is None:
            spec = dataclasses.replace(spec, params=spec.params.model_copy(
                update={"index": IndexParams.model_validate({**index.model_dump(), "memory": memory})}))
        out.append(spec)
    return out


def check_spaces(created: Mapping[str, Detector], specs: list[DetectorSpec], infos: Mapping[str, StoreInfo],
                 stores: Mapping[str, Path], primary: str) -> dict[str, set[str]]:
    """Every detector's declared spaces must be in the store it reads: refused before anything is loaded.
    Returns the stored spaces each store is read for (what the scan loads)."""
    needed: dict[str, set[str]] = {name: set() for name in stores}
    for spec in specs:
        store = spec.embeddings or primary
        reads = created[spec.column].reads()
        infos[store].require(reads, f"detector {spec.column!r}", str(stores[store]))
        needed[store].update(map(infos[store].resolve, reads))
    return needed


def _order(specs: list[DetectorSpec], created: dict[str, Detector]) -> list[DetectorSpec]:
    """Detectors in the given order, except that an ensemble waits for the columns it combines."""
    done: set[str] = set()
    ordered: list[DetectorSpec] = []
    pending = list(specs)
    while pending:
        ready = [s for s in pending if set(created[s.column].uses) <= done]
        if not ready:
            raise RegistryError(f"ensembles depend on each other in a cycle: {[s.column for s in pending]}")
        for s in ready:
            ordered.append(s)
            done.add(s.column)
            pending.remove(s)
    return ordered


def _dataset_of(info: StoreInfo) -> dict[str, str] | None:
    return info.dataset.to_dict() if info.dataset is not None else None


def scanned_dataset(infos: Mapping[str, StoreInfo], stores: Mapping[str, Path]) -> tuple[DatasetRef | None, list[str]]:
    """The shard folder the scores describe (the primary store's, the first); every other store must have
    embedded the same one (a reference model's embeddings of another dataset are refused). Returns warnings
    too. Read from the stores' info files: checked before any vector is loaded."""
    first = next(iter(stores))
    warnings: list[str] = []
    for name, store in stores.items():
        if name != first:
            warnings += check_same_dataset((f"the embeddings {stores[first]}", infos[first].dataset),
                                           (f"the embeddings {store}", infos[name].dataset))
    return infos[first].dataset, warnings


def _config(infos: Mapping[str, StoreInfo], stores: Mapping[str, Path], specs: list[DetectorSpec]) -> dict[str, Any]:
    """What a scan's scores depend on, from the stores' info files alone: a rerun with the same config is
    recognised before any vector is loaded."""
    return {
        "stores": {name: {"path": str(Path(p).resolve()), "model_id": infos[name].model_id,
                          "embedder": infos[name].embedder, "spaces": infos[name].spaces,
                          "source": infos[name].source, "dataset": _dataset_of(infos[name])}
                   for name, p in stores.items()},
        "primary": next(iter(stores)),
        "detectors": {s.column: s.describe() for s in specs},
    }


def _claim(out: Path, config: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The finished scan in ``out`` when it has the same config (nothing to do), None when this scan is to
    run; a folder holding another scan (without ``overwrite``) or other data is refused."""
    existing = out / SCAN_FILE
    if existing.exists() and not overwrite:
        previous = json.loads(existing.read_text())
        if previous.get("config") == config:
            return {**previous, "skipped": True}
        raise FileExistsError(f"{out} holds a scan with other stores or detectors; use another folder or overwrite")
    if not existing.exists() and out.exists() and (list_score_shards(out) or any(out.glob("*.tar"))):
        raise FileExistsError(f"{out} holds other data (NNNNN.parquet or tars) and no scan; use an empty folder")
    return None


def _drop_previous(out: Path, shard_names: Sequence[str]) -> None:
    """Overwriting an earlier scan of ``out``: its summary goes first, and tables of shards this scan lacks."""
    existing = out / SCAN_FILE
    if existing.exists():
        existing.unlink()
        for stale in list_score_shards(out):
            if stale not in shard_names:
                score_path(out, stale).unlink()


def _score(corpus: Corpus, specs: list[DetectorSpec], created: Mapping[str, Detector],
           shard_runner: ShardRunner | None) -> ScanContext:
    """Every detector's column, ensembles after the columns they combine (timed per column)."""
    ctx = ScanContext(corpus, shard_runner)
    for spec in specs:
        created[spec.column].plan(ctx, spec.embeddings or corpus.primary)
    for spec in _order(specs, dict(created)):
        start = time.perf_counter()
        ctx.columns[spec.column] = created[spec.column].score(ctx, spec.embeddings or corpus.primary)
        ctx.timings[spec.column] = round(time.perf_counter() - start, 3)
    return ctx


def _write_tables(out: Path, corpus: Corpus, specs: list[DetectorSpec], columns: Mapping[str, np.ndarray]) -> None:
    """One score table per shard: the keys, what the store says of each row, and every column."""
    stored = corpus.model()
    for i, shard in enumerate(corpus.shard_names):
        rows = corpus.shard_rows(i)
        base = {"key": corpus.keys[rows], "live": corpus.live[rows], "reason": corpus.reasons[rows],
                **{f"{EMBEDDED_PREFIX}{s}": stored.ok[s][rows] for s in stored.spaces}}
        write_score_shard(out, shard, base, {s.column: columns[s.column][rows] for s in specs})


def scan(emb: Path | Mapping[str, Path], detectors: Mapping[str, Mapping[str, Any] | None] | Sequence[str] | None,
         out: Path, overwrite: bool = False, index_memory: str | None = None,
         shard_runner: ShardRunner | None = None) -> dict[str, Any]:
    """Score every sample with every detector; write ``out/{shard}.parquet`` and ``out/scan.json``.
    ``index_memory`` (e.g. ``"4GiB"``) bounds each neighbour index (see ``filters/budget.py``);
    ``shard_runner`` is where its index shards are searched (this process by default)."""
    out = Path(out)
    specs = with_index_memory(detector_specs(DEFAULT_DETECTORS if detectors is None else detectors), index_memory)
    stores = {"model": Path(emb)} if isinstance(emb, (str, Path)) else {k: Path(v) for k, v in emb.items()}
    for spec in specs:
        if spec.embeddings is not None and spec.embeddings not in stores:
            raise ValueError(f"detector {spec.column!r} asks for embeddings {spec.embeddings!r}; "
                             f"given: {', '.join(stores)}")
    primary = next(iter(stores))
    created = {s.column: s.create() for s in specs}
    infos = {name: read_info(path) for name, path in stores.items()}
    needed = check_spaces(created, specs, infos, stores, primary)
    dataset, warnings = scanned_dataset(infos, stores)
    config = _config(infos, stores, specs)
    done = _claim(out, config, overwrite)
    if done is not None:
        return done
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="poisonlab-scan-") as spill:
        corpus = load_corpus(stores, needed, spill=Path(spill))
        _drop_previous(out, corpus.shard_names)
        out.mkdir(parents=True, exist_ok=True)
        ctx = _score(corpus, specs, created, shard_runner)
        _write_tables(out, corpus, specs, ctx.columns)
    summary = {
        "config": config,
        "dataset": dataset.to_dict() if dataset is not None else None,  # what `clean` and `recall` check
        "warnings": warnings,
        "samples": len(corpus),
        "live": int(corpus.live.sum()),
        "shards": len(corpus.shard_names),
        "columns": [s.column for s in specs],
        "graphs": ctx.graph_info,
        "seconds": {"total": round(time.perf_counter() - started, 3), **ctx.timings},
        "out": str(out),
    }
    atomic_write_json(out / SCAN_FILE, summary)
    return summary
