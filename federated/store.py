"""The files of a federated run, all written atomically (temporary name, then rename; markers last).

    RUN/initial.safetensors                 the global weights before round 0
    RUN/probe.safetensors                   the clean probe images every client's encoder embeds
    RUN/rounds/NNNN/clients/CCCC.safetensors        client CCCC's delta as the server received it
    RUN/rounds/NNNN/clients/CCCC.probe.safetensors  its local encoder's probe embeddings
    RUN/rounds/NNNN/clients/CCCC.json               its sample count and loss (written last: the marker)
    RUN/rounds/NNNN/inspection.parquet      the round's client scores
    RUN/rounds/NNNN/global.safetensors      the global weights after the round
    RUN/rounds/NNNN/round.json              what the server did (written last: the round is finished)

Tensors are safetensors only: nothing a federated run reads is ever unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from poisonlab.shards.layout import atomic_path, atomic_write_json

ROUNDS_DIR = "rounds"
INITIAL_FILE = "initial.safetensors"
PROBE_FILE = "probe.safetensors"
ROUND_FILE = "round.json"
GLOBAL_FILE = "global.safetensors"
INSPECTION_FILE = "inspection.parquet"


def round_dir(run: Path, round_: int) -> Path:
    return Path(run) / ROUNDS_DIR / f"{round_:04d}"


def clients_dir(run: Path, round_: int) -> Path:
    return round_dir(run, round_) / "clients"


def client_file(run: Path, round_: int, client: int, suffix: str) -> Path:
    """``clients/CCCC.safetensors``, ``CCCC.probe.safetensors`` or ``CCCC.json`` of a round."""
    return clients_dir(run, round_) / f"{client:04d}{suffix}"


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Named tensors to safetensors, atomically (contiguous CPU copies)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def global_before(run: Path, round_: int) -> Path:
    """The weights round ``round_`` starts from: the previous round's global, or the initial weights."""
    return Path(run) / INITIAL_FILE if round_ == 0 else round_dir(run, round_ - 1) / GLOBAL_FILE


def write_round_record(run: Path, round_: int, record: Mapping[str, Any]) -> None:
    atomic_write_json(round_dir(run, round_) / ROUND_FILE, dict(record))


def read_round_record(run: Path, round_: int) -> dict[str, Any] | None:
    path = round_dir(run, round_) / ROUND_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def finished_rounds(run: Path) -> int:
    """How many rounds, from round 0 on, are finished (their record and global weights are there)."""
    count = 0
    while (round_dir(run, count) / ROUND_FILE).is_file() and (round_dir(run, count) / GLOBAL_FILE).is_file():
        count += 1
    return count
