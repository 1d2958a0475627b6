"""Filter recall: how well each detector finds the poisoned samples a manifest lists.

For each score column, over the live samples of the scan: AUROC, PR-AUC (average precision), the false
positive rate at 95% true positive rate, and recall and precision when removing the top share of samples
at each budget (0.1%, 1%, 2% (the cleaning budget of `clean` and the demo) and 5% by default; ties broken
by key, as the ``top_fraction`` decision does). Computed for all positives together and for each attack of
the manifest separately, by the recipe's attack id (that attack's positives against the clean samples;
other attacks' samples left out): two attacks of one type with different triggers or targets are two
sections. Leaving the other attacks out answers "how well does the detector see this attack"; what one
cleaning budget over the whole set removes of each attack is ``joint_recall`` beside it (the other
attacks' pairs take places in that budget too, so it is never higher). Samples a detector could not score
rank below every scored one. ROC (linear or log false positive rate) and PR curves are written as PNG,
the numbers as JSON and a markdown summary.

The scores and the manifest must describe the same shard folder: the scan's ``dataset`` (the folder that
was embedded) must be the poisoned output the manifest was written for (its parquet metadata records that
folder's fingerprint). A mismatch is refused in one line unless forced; a scan or manifest written before
fingerprints were recorded (or a manifest from elsewhere, e.g. split-view's) is accepted with a warning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from poisonlab.attacks.manifest import manifest_path
from poisonlab.filters.scores import ScoreTable, key_ranks, load_scores, ranking, scores_ref
from poisonlab.shards.fingerprint import check_same_dataset, table_ref
from poisonlab.shards.layout import atomic_path, atomic_write_text

BUDGETS = (0.001, 0.01, 0.02, 0.05)  # 2%: the removal budget `clean` and the demo use
ROC_SCALES = ("linear", "log")  # the false positive rate axis: log shows the low-FPR region budgets live in


def budget_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def budget_rows(budget: float, n: int) -> int:
    """How many of ``n`` ranked samples a removal budget takes (the ``top_fraction`` decision's count)."""
    return min(n, math.ceil(budget * n - 1e-9))


def _finite(scores: np.ndarray) -> np.ndarray:
    ok = np.isfinite(scores)
    if ok.all():
        return scores
    low = scores[ok].min() - 1.0 if ok.any() else 0.0
    return np.where(ok, scores, low)


def detection_metrics(scores: np.ndarray, labels: np.ndarray, tie_break: np.ndarray,
                      budgets: Sequence[float] = BUDGETS) -> dict[str, Any]:
    """Metrics of one score column for one set of positives (labels True)."""
    positives, n = int(labels.sum()), len(labels)
    result: dict[str, Any] = {"samples": n, "positives": positives, "unscored": int((~np.isfinite(scores)).sum())}
    if positives == 0 or positives == n:
        return {**result, "auroc": None, "pr_auc": None, "fpr_at_95_tpr": None, "budgets": {}}
    s = _finite(scores)
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve  # 4 s: not at CLI start-up

    fpr, tpr, _ = roc_curve(labels, s)
    result["auroc"] = float(roc_auc_score(labels, s))
    result["pr_auc"] = float(average_precision_score(labels, s))
    result["fpr_at_95_tpr"] = float(fpr[np.searchsorted(tpr, 0.95, side="left")])
    order = ranking(scores, tie_break)
    found = np.cumsum(labels[order])
    result["budgets"] = {}
    for b in budgets:
        removed = budget_rows(b, n)
        tp = int(found[removed - 1]) if removed else 0
        result["budgets"][budget_label(b)] = {"removed": removed, "recall": tp / positives,
                                              "precision": tp / removed if removed else None}
    return result


def joint_recall(scores: np.ndarray, attack_of: np.ndarray, attacks: Sequence[str], tie_break: np.ndarray,
                 budgets: Sequence[float] = BUDGETS) -> dict[str, dict[str, float]]:
    """attack -> budget -> the share of that attack's samples among the top ``budget`` of *all* samples:
    what one cleaning pass removes of each attack when several share the budget."""
    order = ranking(scores, tie_break)
    ranked = attack_of[order]
    n = len(scores)
    out: dict[str, dict[str, float]] = {}
    for attack in attacks:
        found = np.cumsum(ranked == attack)
        total = int(found[-1]) if n else 0
        out[attack] = {}
        for b in budgets:
            removed = budget_rows(b, n)
            out[attack][budget_label(b)] = (int(found[removed - 1]) if removed else 0) / total if total else 0.0
    return out


def parse_budgets(text: str) -> tuple[float, ...]:
    """``"0.001,0.01,0.02"`` -> removal budgets, each a fraction in (0, 1]; one-line errors otherwise."""
    budgets = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"budget {item!r} is not a number; give fractions such as 0.001,0.01,0.02,0.05") from None
        if not 0 < value <= 1:
            raise ValueError(f"budget {item} is not a fraction in (0, 1] (2% is 0.02)")
        budgets.append(value)
    return tuple(sorted(set(budgets)))


def manifest_file(manifest: Path) -> Path:
    """The manifest table itself: a poisoned folder names the manifest its run wrote (``DIR/_run/``, or
    ``DIR/manifest.parquet`` in older folders)."""
    manifest = Path(manifest)
    path = manifest_path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist" + (" (is this a poisoned folder?)" if manifest.is_dir() else ""))
    return path


def _column(table: pa.Table, name: str) -> list[Any] | None:
    return table.column(name).to_pylist() if name in table.column_names else None


def read_manifest_attacks(manifest: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> attack id, attack id -> attack type) from a poison manifest file or folder.

    Sections are the recipe's attack ids (``attack_id``); a table without them falls back to ``attack``,
    then to one section ``poison`` (a key list from elsewhere, e.g. split-view's manifest).
    """
    path = manifest_file(manifest)
    table = pq.read_table(path)
    if "key" not in table.column_names:
        raise ValueError(f"{path} has no 'key' column; expected a poison manifest (key, attack, ...)")
    keys = [str(k) for k in table.column("key").to_pylist()]
    kinds = _column(table, "attack") or ["poison"] * len(keys)
    ids = _column(table, "attack_id") or kinds
    sections = {k: str(i or a or "poison") for k, i, a in zip(keys, ids, kinds, strict=True)}
    types = {str(i or a or "poison"): str(a or "poison") for i, a in zip(ids, kinds, strict=True)}
    return sections, types


def read_manifest_keys(manifest: Path) -> dict[str, str]:
    """key -> attack id from a poison manifest (file or poisoned folder)."""
    return read_manifest_attacks(manifest)[0]


def check_manifest_dataset(table: ScoreTable, scores: Path, manifest: Path, force: bool = False) -> list[str]:
    """The scores must have been computed on the folder the manifest was written for; returns warnings."""
    described = scores_ref(table.info)
    path = manifest_file(manifest)
    return check_same_dataset((f"the scores in {scores}", described),
                              (f"the manifest {path}", table_ref(path, described)), force)


def recall_report(scores: Path | ScoreTable, manifest: Path | dict[str, str], out: Path | None = None,
                  budgets: Sequence[float] = BUDGETS, detectors: Sequence[str] | None = None, force: bool = False,
                  roc_scale: str = "linear") -> dict[str, Any]:
    """Metrics per detector and per attack id; with ``out``, also recall.json, recall.md and the curves.

    ``manifest``: a manifest file, a poisoned folder, or key -> attack id. Scores and a manifest read from
    disk must describe the same folder (``check_manifest_dataset``; ``force`` combines them anyway).
    """
    if roc_scale not in ROC_SCALES:
        raise ValueError(f"roc_scale must be one of {', '.join(ROC_SCALES)}, not {roc_scale!r}")
    table = scores if isinstance(scores, ScoreTable) else load_scores(Path(scores))
    warnings: list[str] = []
    if isinstance(manifest, dict):
        poisoned, types = manifest, {a: a for a in manifest.values()}
    else:
        if not isinstance(scores, ScoreTable):
            warnings = check_manifest_dataset(table, Path(scores), Path(manifest), force)
        poisoned, types = read_manifest_attacks(Path(manifest))
    live = np.flatnonzero(table.live)
    keys = [table.keys[i] for i in live]
    attack_of = np.array([poisoned.get(k, "") for k in keys], dtype=object)
    labels = attack_of != ""
    tie = key_ranks(keys)
    names = list(detectors) if detectors is not None else list(table.columns)
    attacks = sorted(set(attack_of[labels].tolist()))
    report: dict[str, Any] = {
        "samples": len(keys),
        "positives": int(labels.sum()),
        "manifest_keys": len(poisoned),
        "missing_positives": len(set(poisoned) - set(keys)),
        "attacks": {a: int((attack_of == a).sum()) for a in attacks},
        "attack_types": {a: types.get(a, a) for a in attacks},
        "budgets": [budget_label(b) for b in budgets],
        "warnings": warnings,
        "detectors": {},
    }
    for name in names:
        column = table.column(name)[live]
        entry = {"all": detection_metrics(column, labels, tie, budgets), "per_attack": {}}
        joint = joint_recall(column, attack_of, attacks, tie, budgets)
        for attack in attacks:
            subset = (attack_of == attack) | ~labels
            entry["per_attack"][attack] = {**detection_metrics(column[subset], labels[subset], tie[subset], budgets),
                                           "joint_recall": joint[attack]}
        report["detectors"][name] = entry
    if out is not None:
        report["files"] = write_report(Path(out), report, table, live, labels, attack_of, names, roc_scale)
    return report


def write_report(out: Path, report: dict[str, Any], table: ScoreTable, live: np.ndarray, labels: np.ndarray,
                 attack_of: np.ndarray, names: list[str], roc_scale: str = "linear") -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "recall.json"), "markdown": str(out / "recall.md")}
    scopes = {"all": np.ones(len(labels), bool)}
    if len(report["attacks"]) > 1:
        scopes.update({a: (attack_of == a) | ~labels for a in report["attacks"]})
    for scope, subset in scopes.items():
        suffix = "" if scope == "all" else f"_{_slug(scope)}"
        curves = {n: table.column(n)[live][subset] for n in names}
        files[f"roc{suffix}"], files[f"pr{suffix}"] = plot_curves(out, curves, labels[subset], suffix, scope, roc_scale)
    atomic_write_text(out / "recall.md", _line_ended(markdown_summary(report)))
    atomic_write_text(out / "recall.json", _line_ended(json.dumps({**report, "files": files}, indent=2, sort_keys=True)))
    return files


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:40]


def _line_ended(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _roc_axes(ax: Any, labels: np.ndarray, scale: str, title: str) -> None:
    """Chance line and labels; on a log scale the axis starts at one false positive (0 cannot be shown)."""
    if scale == "log":
        low = 1.0 / max(1, int((~labels.astype(bool)).sum()))
        ax.set_xscale("log")
        ax.set_xlim(low, 1.0)
        chance = np.logspace(np.log10(low), 0, 50)
        ax.plot(chance, chance, color="grey", linestyle=":", linewidth=1)
    else:
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel=f"false positive rate{' (log)' if scale == 'log' else ''}", ylabel="true positive rate",
           title=f"ROC: {title}")


def plot_curves(out: Path, columns: dict[str, np.ndarray], labels: np.ndarray, suffix: str,
                title: str, roc_scale: str = "linear") -> tuple[str, str]:
    import matplotlib
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
        if 0 < labels.sum() < len(labels):
            for name, scores in columns.items():
                s = _finite(scores)
                if kind == "roc":
                    x, y, _ = roc_curve(labels, s)
                    ax.plot(x, y, label=f"{name} ({roc_auc_score(labels, s):.3f})")
                else:
                    precision, recall, _ = precision_recall_curve(labels, s)
                    ax.plot(recall, precision, label=f"{name} ({average_precision_score(labels, s):.3f})")
        if kind == "roc":
            _roc_axes(ax, labels, roc_scale, title)
        else:
            ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall: {title}")
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper right")
        fig.tight_layout()
        path = out / f"{kind}{suffix}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(str(path))
    return paths[0], paths[1]


def _cell(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_summary(report: dict[str, Any]) -> str:
    budgets = report["budgets"]
    head = ["detector", "AUROC", "PR-AUC", "FPR@95%TPR", *[f"R@{b}" for b in budgets], *[f"P@{b}" for b in budgets]]
    lines = [
        "# Filter recall", "",
        f"{report['samples']} live samples, {report['positives']} poisoned "
        f"({', '.join(f'{a}: {n}' for a, n in report['attacks'].items()) or 'none'})"
        + (f"; {report['missing_positives']} manifest keys not among the live samples" if report["missing_positives"] else "")
        + ".", "",
    ]

    def table(scope_of: Any, joint: bool = False) -> list[str]:
        columns = head + ([f"J@{b}" for b in budgets] if joint else [])
        rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for name, entry in report["detectors"].items():
            m = scope_of(entry)
            cells = [name, _cell(m["auroc"]), _cell(m["pr_auc"]), _cell(m["fpr_at_95_tpr"])]
            cells += [_cell(m["budgets"].get(b, {}).get("recall")) for b in budgets]
            cells += [_cell(m["budgets"].get(b, {}).get("precision")) for b in budgets]
            cells += [_cell(m.get("joint_recall", {}).get(b)) for b in budgets] if joint else []
            rows.append("| " + " | ".join(cells) + " |")
        return rows

    lines += ["## All attacks", "", *table(lambda e: e["all"]), ""]
    types = report.get("attack_types", {})
    if len(report["attacks"]) > 1:
        for attack in report["attacks"]:
            kind = f" ({types[attack]})" if types.get(attack, attack) != attack else ""
            lines += [f"## {attack}{kind}", "", *table(lambda e, a=attack: e["per_attack"][a], joint=True), ""]
    lines.append("R@b / P@b: recall and precision when the top b of the samples by score are removed.")
    if len(report["attacks"]) > 1:
        lines.append("Per attack, R@b ranks that attack's samples against the clean ones only; J@b is the share of "
                     "them among the top b of all samples, where the other attacks take places too (what one "
                     "cleaning budget removes).")
    return "\n".join(lines)
