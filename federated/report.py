"""The comparison over aggregators: final zero-shot and ASR, rounds until ASR > 0.5, detection AUROC.

Detection AUROC is computed over (client, round) rows of each run's inspection tables against the
malicious-client list (``clients.json``): a measurement of the scores, never an input to any decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poisonlab.federated.experiment import FederatedExperiment, inspection_rows
from poisonlab.federated.inspection import detection_auroc
from poisonlab.shards.layout import atomic_write_json, atomic_write_text

ASR_BAR = 0.5


def rounds_until(rows: Sequence[dict[str, Any]], bar: float = ASR_BAR) -> int | None:
    """Rounds (counted from 1) until the global model's ASR first exceeds ``bar``; None if it never does."""
    for row in rows:
        if row["round"] >= 0 and row.get("asr") is not None and row["asr"] > bar:
            return int(row["round"]) + 1
    return None


def summarize(exp: FederatedExperiment, label: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One aggregator's line of the comparison."""
    last = rows[-1] if rows else {}
    malicious = set(exp.recipe.malicious.clients)
    table = inspection_rows(exp.run_dir(label), exp.recipe.rounds)
    aurocs = detection_auroc(table, lambda c: c in malicious) if malicious and table.num_rows else {}
    excluded = sum(table.column("flagged").to_pylist()) if "flagged" in table.column_names else 0
    return {"aggregator": label, "final_zero_shot": last.get("zero_shot"), "final_asr": last.get("asr"),
            "start_zero_shot": rows[0].get("zero_shot") if rows else None,
            "start_asr": rows[0].get("asr") if rows else None,
            "rounds_until_asr_above_0.5": rounds_until(rows), "detection_auroc": aurocs,
            "inspection_excluded": int(excluded), "curve": [dict(r) for r in rows]}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(name: str, lines: Sequence[dict[str, Any]]) -> str:
    scores = sorted({s for line in lines for s in line["detection_auroc"]})
    head = ["aggregator", "final zero-shot", "final ASR", "rounds until ASR > 0.5", "excluded (inspection)"]
    head += [f"AUROC {s}" for s in scores]
    out = [f"# Federated comparison: {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in lines:
        cells = [line["aggregator"], _fmt(line["final_zero_shot"]), _fmt(line["final_asr"]),
                 _fmt(line["rounds_until_asr_above_0.5"]), _fmt(line["inspection_excluded"])]
        cells += [_fmt(line["detection_auroc"].get(s)) for s in scores]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(lines: Sequence[dict[str, Any]], path: Path) -> None:
    """ASR and zero-shot per round, one line per aggregator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for line in lines:
        rounds = [r["round"] + 1 for r in line["curve"]]
        axes[0].plot(rounds, [r.get("asr") or 0.0 for r in line["curve"]], marker="o", label=line["aggregator"])
        axes[1].plot(rounds, [r.get("zero_shot") for r in line["curve"]], marker="o", label=line["aggregator"])
    for ax, title in zip(axes, ("attack success rate", "zero-shot accuracy"), strict=True):
        ax.set_xlabel("rounds finished")
        ax.set_title(title)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with_tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(with_tmp, dpi=100)
    plt.close(fig)
    with_tmp.replace(path)


def write_report(exp: FederatedExperiment, lines: Sequence[dict[str, Any]]) -> Path:
    """``OUT/report/comparison.json``, ``report.md`` and ``rounds.png``."""
    folder = exp.out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "comparison.json", {"recipe": exp.recipe.name, "aggregators": list(lines)})
    atomic_write_text(folder / "report.md", markdown(exp.recipe.name, lines))
    plot(lines, folder / "rounds.png")
    return folder
