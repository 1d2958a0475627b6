"""A federated run's client inspection read as a score table, so ``poisonlab recall`` measures it.

Client inspection scores (client, round) participations, not samples. Read as a ``ScoreTable`` whose key is
the participation (``r0000-c0007``, the name of the client's task) and measured against the malicious-client
manifest (``clients.json``: every participation of a malicious client is a positive), the same recall report
(AUROC, PR-AUC, recall at each budget, ROC curves) serves both. The manifest is read here only to measure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.federated.client_task import client_of, task_name
from poisonlab.federated.experiment import ROLES_FILE
from poisonlab.federated.inspection import SCORES
from poisonlab.federated.store import INSPECTION_FILE
from poisonlab.filters.scores import ScoreTable

POSITIVE = "malicious_client"


def is_inspected_run(path: Path) -> bool:
    """True for a federated run folder (``OUT/runs/AGGREGATOR``) holding per-round inspection tables."""
    return any(Path(path).glob(f"rounds/*/{INSPECTION_FILE}"))


def inspection_score_table(run: Path) -> ScoreTable:
    """Every round's inspection scores of ``run`` as one score table (rows in round, then client order)."""
    rounds = sorted(Path(run).glob(f"rounds/*/{INSPECTION_FILE}"))
    if not rounds:
        raise FileNotFoundError(f"{run} holds no client inspection tables (rounds/*/{INSPECTION_FILE})")
    table = pa.concat_tables([pq.read_table(path) for path in rounds])
    keys = [task_name(int(r), int(c)) for r, c in zip(table.column("round").to_pylist(),
                                                      table.column("client").to_pylist(), strict=True)]
    columns = {name: np.asarray(table.column(name).to_pylist(), dtype=np.float64)
               for name in SCORES if name in table.column_names}
    rows = len(keys)
    return ScoreTable(keys=keys, shards=np.array(["inspection"] * rows), live=np.ones(rows, dtype=bool),
                      reasons=[""] * rows, columns=columns, info={"run": str(run), "unit": "client round"})


def roles_file(manifest: Path) -> Path:
    """``clients.json`` itself, or the federated output folder that holds it."""
    manifest = Path(manifest)
    path = manifest / ROLES_FILE if manifest.is_dir() else manifest
    if not path.is_file():
        raise FileNotFoundError(f"{manifest}: no malicious-client manifest ({ROLES_FILE} of `poisonlab federate`)")
    return path


def malicious_participations(table: ScoreTable, manifest: Path) -> dict[str, str]:
    """Participation key -> ``malicious_client`` for every scored participation of a malicious client."""
    roles = json.loads(roles_file(manifest).read_text())
    malicious = {int(c) for c in roles.get("malicious", [])}
    return {key: POSITIVE for key in table.keys if client_of(key) in malicious}


def inspection_recall(run: Path, manifest: Path, out: Path | None, budgets: Sequence[float], force: bool,
                      roc_scale: str) -> dict[str, Any]:
    """The recall report of a run's client inspection against the malicious-client manifest."""
    from poisonlab.filters.metrics import recall_report

    warnings = check_run_of(run, manifest, force)
    table = inspection_score_table(run)
    result = recall_report(table, malicious_participations(table, manifest), out=out, budgets=budgets,
                           roc_scale=roc_scale)
    result["warnings"] = warnings + list(result.get("warnings", []))
    return result


def check_run_of(run: Path, manifest: Path, force: bool) -> list[str]:
    """The run must belong to the experiment whose manifest is given (``OUT/runs/NAME`` with ``OUT/clients.json``)."""
    owner = roles_file(manifest).parent.resolve()
    if owner in Path(run).resolve().parents:
        return []
    message = f"{run} is not a run of the federated experiment in {owner}"
    if not force:
        raise ValueError(message + " (--force measures it anyway)")
    return [message]

