"""Lineage of a poisoned copy made for federated clients: which dataset it was made from.

``federated.poisoning`` writes ``DIR/_run/federated_lineage.json`` (source fingerprint, the copy's own
fingerprint when finished); ``client_data.check_dataset`` reads it, so a partition of the source serves the
unchanged poisoned copy and nothing else. Kept apart so reading a client's data imports no attack code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poisonlab.shards.layout import run_file

LINEAGE_FILE = "federated_lineage.json"


def read_lineage(shards: Path) -> dict[str, Any] | None:
    """The lineage record of a poisoned copy made by ``federated.poisoning`` (None for any other folder)."""
    path = run_file(Path(shards), LINEAGE_FILE)
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return raw if isinstance(raw, dict) else None
