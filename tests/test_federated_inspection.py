"""Client inspection scores on small hand-made updates and embeddings, the flag rule, and the AUROC."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from poisonlab.federated.inspection import (
    cosine_scores,
    detection_auroc,
    eminspector_scores,
    flag,
    inspection_table,
    norm_scores,
    score_round,
)
from poisonlab.federated.updates import ClientUpdate


def test_norm_and_cosine_scores_by_hand() -> None:
    matrix = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]])
    assert norm_scores(matrix).tolist() == [5.0, 1.0, 1.0]
    # coordinate median (1, 1): cos with (3,4) = 7 / (5 sqrt 2); with (1,0) and (0,1) = 1 / sqrt 2
    expected = [1 - 7 / (5 * math.sqrt(2)), 1 - 1 / math.sqrt(2), 1 - 1 / math.sqrt(2)]
    assert cosine_scores(matrix) == pytest.approx(expected)


def test_eminspector_scores_the_encoder_that_embeds_differently() -> None:
    base = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))[0]
    collapsed = torch.nn.functional.normalize(base + 3 * torch.ones(4), dim=1)  # everything pulled one way
    scores = eminspector_scores([base, base @ rotation, base, collapsed])
    assert scores[:3] == pytest.approx([0, 0, 0], abs=1e-6)  # a rotation of the space is not a difference
    assert scores[3] > 0.1


def test_flag_rule_and_table() -> None:
    assert flag(np.array([1.0, 1.1, 0.9, 5.0]), 2.0).tolist() == [False, False, False, True]
    assert not flag(np.array([1.0, 9.0]), 2.0).any()  # too few clients to call one an outlier
    updates = [ClientUpdate(c, {"w": torch.tensor([float(c), 1.0])}) for c in (2, 5, 7)]
    scores = score_round(updates, None)
    assert set(scores) == {"norm", "cosine"}
    table = inspection_table(4, [2, 5, 7], scores, np.array([False, True, False]))
    assert table.column("round").to_pylist() == [4, 4, 4] and table.column("flagged").to_pylist() == [False, True, False]


def test_detection_auroc_measures_against_the_malicious_list() -> None:
    table = pa.table({"round": [0, 0, 1, 1], "client": [1, 2, 1, 3], "norm": [5.0, 1.0, 4.0, 2.0],
                      "cosine": [0.1, 0.2, 0.1, 0.3]})
    aurocs = detection_auroc(table, lambda c: c == 1)
    assert aurocs == {"norm": 1.0, "cosine": 0.0}
    assert detection_auroc(table, lambda c: False) == {"norm": None, "cosine": None}
