"""Linear-probe accuracy: a logistic regression on frozen image features, on a keyed split of the eval set.

The split is a pure function of each sample's key (not of order or a global generator), so the same
split is used for every model compared, and reruns score identically.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from poisonlab.pipelines.keyed import keyed_uniform

PROBE_STAGE = "eval/linear_probe"


def probe_split(keys: Sequence[str], train_fraction: float = 0.6, seed: int = 0) -> np.ndarray:
    """True where a sample trains the probe, False where it tests it."""
    return np.asarray([keyed_uniform(seed, PROBE_STAGE, k) < train_fraction for k in keys], dtype=bool)


def fit_probe(features: np.ndarray, labels: np.ndarray, keys: Sequence[str], train_fraction: float = 0.6,
              seed: int = 0) -> tuple[Pipeline | None, np.ndarray]:
    """The probe fitted on the keyed train part (None when that part cannot train one) and the split mask:
    kept, so a backdoor can be measured through the same probe (probe ASR)."""
    is_train = probe_split(keys, train_fraction, seed)
    if is_train.all() or not is_train.any() or len(np.unique(labels[is_train])) < 2:
        return None, is_train
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    clf.fit(features[is_train], labels[is_train])
    return clf, is_train


def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, keys: Sequence[str],
                          train_fraction: float = 0.6, seed: int = 0) -> dict[str, float | int]:
    clf, is_train = fit_probe(features, labels, keys, train_fraction, seed)
    if clf is None:
        return {"accuracy": float("nan"), "train": int(is_train.sum()), "test": int((~is_train).sum())}
    accuracy = float((clf.predict(features[~is_train]) == labels[~is_train]).mean())
    return {"accuracy": accuracy, "train": int(is_train.sum()), "test": int((~is_train).sum())}
