"""The rate-free ``default`` detector against its ingredients and fixed-k kdist, across attacks and rates.

Each case is an embedding store of a poisoned dataset (embedded with a trained run: the victim or the
clean baseline) and its poison manifest; the manifest is used only to measure. Prints one markdown table:
AUROC and recall when the top 2 % by score are removed.

    nice -n 10 .venv/bin/python benchmarks/bench_detect_default.py \
        --case badnets_0.5%=EMB_STORE:MANIFEST [--case ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

DETECTORS: dict[str, dict[str, Any]] = {
    "default": {},
    "default_rank_mean": {"detector": "default", "method": "rank_mean"},
    "default_two": {"detector": "default", "detectors": ["kdist_subsets", "phrase_burst"]},
    "kdist_subsets": {},
    "phrase_burst": {},
    "kdist_k16": {"detector": "kdist", "k": 16},
    "kdist_k50": {"detector": "kdist", "k": 50},
    "kdist_k400": {"detector": "kdist", "k": 400},
}
BUDGET = 0.02


def score_case(store: Path, manifest: Path) -> tuple[dict[str, dict[str, float]], int, int, float]:
    """Metrics per detector on one store, the positives, the samples and the seconds the scoring took."""
    from poisonlab.filters.context import ScanContext
    from poisonlab.filters.corpus import load_corpus
    from poisonlab.filters.metrics import detection_metrics, read_manifest_keys
    from poisonlab.filters.scan import _order, detector_specs

    corpus = load_corpus(store)
    poisoned = read_manifest_keys(manifest)
    labels = np.array([k in poisoned for k in corpus.keys])
    specs = detector_specs(DETECTORS)
    created = {s.column: s.create() for s in specs}
    ctx = ScanContext(corpus)
    for s in specs:
        created[s.column].plan(ctx, corpus.primary)
    started = time.perf_counter()
    for s in _order(specs, created):
        ctx.columns[s.column] = created[s.column].score(ctx, corpus.primary)
    tie = np.arange(len(corpus))
    out = {}
    for name, col in ctx.columns.items():
        m = detection_metrics(col[corpus.live], labels[corpus.live], tie[corpus.live], (BUDGET,))
        out[name] = {"auroc": m["auroc"], "recall": m["budgets"][f"{BUDGET * 100:g}%"]["recall"]}
    return out, int(labels.sum()), len(corpus), time.perf_counter() - started


def table(results: dict[str, tuple[dict[str, dict[str, float]], int, int, float]]) -> str:
    names = list(DETECTORS)
    head = "| case | poisoned / samples | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    for case, (metrics, positives, n, _) in results.items():
        cells = [f"{metrics[d]['auroc']:.3f} / {metrics[d]['recall']:.2f}" for d in names]
        lines.append(f"| {case} | {positives} / {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nCells: AUROC / recall when the top {BUDGET:.0%} by score are removed."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, help="NAME=EMB_STORE:MANIFEST")
    args = parser.parse_args()
    results = {}
    for case in args.case:
        name, _, paths = case.partition("=")
        store, _, manifest = paths.partition(":")
        results[name] = score_case(Path(store), Path(manifest))
        print(f"{name}: scored in {results[name][3]:.1f} s", flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
