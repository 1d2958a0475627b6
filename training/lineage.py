"""Which datasets a training run learned from, so that ``evaluate --attack-from`` measures an attack of its
own dataset.

A run's data folder is named by its fingerprint (``poisonlab.shards.fingerprint``) and, one step back, by
the folder it was derived from: a poisoned folder's ``attack.json`` records the source it poisoned, a
cleaned folder's ``clean.json`` the poisoned folder it cleaned. ``train`` writes these fingerprints to the
run's ``data.json``. An attack belongs to the same dataset as a run when the attack's family (its source
and its poisoned output) meets the run's lineage: the victim (trained on the poisoned folder), the
baseline (on its source) and a model retrained on the cleaned folder all pass; a run trained on another
dataset does not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poisonlab.attacks.spec import SPEC_FILE
from poisonlab.filters.clean import CLEAN_REPORT
from poisonlab.shards.fingerprint import dataset_fingerprint, refuse_unless_forced
from poisonlab.shards.layout import atomic_write_json, list_shards

DATA_RECORD = "data.json"


def _recorded(path: Path, *keys: str) -> str | None:
    """A fingerprint nested under ``keys`` in a JSON record, or None (no record, an older one)."""
    try:
        value: Any = json.loads(path.read_text(encoding="utf-8"))
        for key in keys:
            value = value[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def lineage(folder: Path) -> tuple[str, ...]:
    """The fingerprints of ``folder`` and of the folder it was poisoned or cleaned from (when recorded)."""
    folder = Path(folder)
    found = [dataset_fingerprint(folder)] if list_shards(folder) else []
    found += [f for f in (_recorded(folder / SPEC_FILE, "dataset", "fingerprint"),
                          _recorded(folder / CLEAN_REPORT, "dataset", "fingerprint")) if f]
    return tuple(dict.fromkeys(found))


def write_data_record(run_dir: Path, shards: Path) -> None:
    """``data.json``: the lineage of the run's training shards (fingerprints only: no path, same bytes anywhere)."""
    atomic_write_json(Path(run_dir) / DATA_RECORD, {"lineage": list(lineage(shards))})


def check_attack_of_run(run_dir: Path, attack_from: Path, force: bool = False) -> list[str]:
    """Refuse an attack of another dataset than the run's; returns warnings (an old run, a recipe, forced)."""
    attack_from = Path(attack_from)
    folder = attack_from.parent if attack_from.is_file() else attack_from
    if attack_from.is_file() and attack_from.name != SPEC_FILE:
        return []  # a recipe: not an output of any dataset, nothing to compare
    raw = json.loads((Path(run_dir) / DATA_RECORD).read_text()) if (Path(run_dir) / DATA_RECORD).is_file() else {}
    run_lineage = set(raw.get("lineage") or [])
    family = set(lineage(folder))
    if not run_lineage or not family:
        return [f"{run_dir if not run_lineage else attack_from}: no dataset fingerprint recorded (not written by "
                "poisonlab train, or by an older version), so the attack is not checked against the run's training data"]
    if run_lineage & family:
        return []
    message = (f"the run {run_dir} was trained on other data (fingerprints {', '.join(sorted(f[:12] for f in run_lineage))}) "
               f"than the attack in {folder} poisoned or produced ({', '.join(sorted(f[:12] for f in family))})")
    return refuse_unless_forced(message, force, "evaluate with an attack of the run's dataset, or --force", "evaluated")
