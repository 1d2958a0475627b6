"""Client inspection: per round, a score for every participating client, from what the server receives.

Three scores, each larger for a client that looks less like the others:

- ``norm``: the L2 norm of the client's delta (boosted model-replacement updates are large);
- ``cosine``: 1 - cos(delta, coordinate-wise median of the round's deltas) (a delta pulling elsewhere);
- ``eminspector``: after EmInspector (Qian et al. 2024), how the client's local encoder embeds a small
  clean probe set compared with the other clients: the mean absolute difference between its probe
  similarity matrix (``E E^T``, invariant to rotations of the embedding space) and the element-wise median
  of the other clients' matrices.

``flag`` turns a score into exclusions with a rule that needs no ground truth: a client is flagged when its
score exceeds ``ratio`` times the round's median score (at most half the clients can be). The malicious-client
manifest is read only by ``detection_auroc``, to measure, never to choose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from poisonlab.federated.aggregators import coordinate_median
from poisonlab.federated.updates import ClientUpdate, stack_updates

SCORES = ("norm", "cosine", "eminspector")


def norm_scores(matrix: torch.Tensor) -> np.ndarray:
    return matrix.double().norm(dim=1).numpy()


def cosine_scores(matrix: torch.Tensor) -> np.ndarray:
    """1 - cos(row, coordinate median of the rows)."""
    median = coordinate_median(matrix).double()
    rows = matrix.double()
    cos = (rows @ median) / (rows.norm(dim=1) * median.norm()).clamp_min(1e-12)
    return (1.0 - cos).numpy()


def eminspector_scores(embeddings: Sequence[torch.Tensor]) -> np.ndarray:
    """Mean |S_i - median_{j != i} S_j| over probe pairs, S = E E^T of unit embeddings (one per client)."""
    sims = torch.stack([e.double() @ e.double().T for e in embeddings])
    n = sims.shape[0]
    if n < 2:
        return np.zeros(n)
    out = []
    for i in range(n):
        others = torch.cat([sims[:i], sims[i + 1:]])
        out.append(float((sims[i] - others.median(dim=0).values).abs().mean()))
    return np.asarray(out)


def score_round(updates: Sequence[ClientUpdate], embeddings: Mapping[int, torch.Tensor] | None) -> dict[str, np.ndarray]:
    """Every score for the round's clients (in ``updates`` order); eminspector only with probe embeddings."""
    matrix, _ = stack_updates(updates)
    scores = {"norm": norm_scores(matrix), "cosine": cosine_scores(matrix)}
    if embeddings is not None and all(u.client in embeddings for u in updates):
        scores["eminspector"] = eminspector_scores([embeddings[u.client] for u in updates])
    return scores


def flag(scores: np.ndarray, ratio: float) -> np.ndarray:
    """True where a score exceeds ``ratio`` times the median score of the round."""
    if len(scores) < 3:
        return np.zeros(len(scores), dtype=bool)
    return scores > ratio * float(np.median(scores))


def inspection_table(round_: int, clients: Sequence[int], scores: Mapping[str, np.ndarray],
                     flagged: np.ndarray) -> pa.Table:
    """One row per (round, client): every score and whether the rule flagged it."""
    columns: dict[str, pa.Array] = {"round": pa.array([round_] * len(clients), pa.int32()),
                                    "client": pa.array(list(clients), pa.int32())}
    for name in SCORES:
        if name in scores:
            columns[name] = pa.array(scores[name].astype(np.float64))
    columns["flagged"] = pa.array(flagged.astype(bool))
    return pa.table(columns)


def detection_auroc(table: pa.Table, is_malicious: Callable[[int], bool]) -> dict[str, float | None]:
    """AUROC of each score over (client, round) rows against the malicious-client list (measurement only;
    None when the rows hold only one class)."""
    from sklearn.metrics import roc_auc_score

    labels = np.array([is_malicious(int(c)) for c in table.column("client").to_pylist()])
    out: dict[str, float | None] = {}
    for name in SCORES:
        if name not in table.column_names:
            continue
        values = np.asarray(table.column(name).to_pylist(), dtype=np.float64)
        out[name] = float(roc_auc_score(labels, values)) if 0 < labels.sum() < len(labels) else None
    return out
