"""The experiment report: one table of models (zero-shot accuracy, attack success), one of detectors
(AUROC, recall at the cleaning budget), and plots (ROC curves, attack success before/after, loss curves),
written as Markdown and as a self-contained HTML page (plots embedded).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poisonlab.shards.layout import atomic_path, atomic_write_text
from poisonlab.training.attack_eval import ASR_DEFINITION
from poisonlab.training.metrics import plot_losses


@dataclasses.dataclass(frozen=True)
class ModelRow:
    """One trained model's headline numbers; ``attack_success`` holds one entry per attack of the recipe
    (attack id -> success), so a victim of several backdoors shows every one of them."""

    label: str
    trained_on: str
    zero_shot: float
    attack_success: dict[str, float | None]
    linear_probe: float
    retrieval_r1: float | None
    loss_csv: Path | None = None

    @property
    def first_success(self) -> float | None:
        """The first attack's success (the plot's bar; the only one in a single-attack recipe)."""
        return next(iter(self.attack_success.values()), None)


@dataclasses.dataclass(frozen=True)
class DetectorRow:
    name: str
    auroc: float
    recall_at_budget: float
    precision_at_budget: float
    removed: int
    fpr: Sequence[float] = ()
    tpr: Sequence[float] = ()
    chosen: bool = False


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _plot_roc(detectors: Sequence[DetectorRow], out: Path) -> Path | None:
    curves = [d for d in detectors if len(d.fpr) > 1]
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2), dpi=110)
    for d in curves:
        ax.plot(d.fpr, d.tpr, label=f"{d.name} (AUROC {d.auroc:.3f})", linewidth=2.0 if d.chosen else 1.2)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate (poisoned pairs found)")
    ax.set_title("detectors, victim embeddings")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out)


def _plot_success(models: Sequence[ModelRow], out: Path) -> Path | None:
    rows = [m for m in models if m.first_success is not None]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.4), dpi=110)
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [m.first_success for m in rows], width=0.4,
           label=f"attack success ({next(iter(rows[0].attack_success))})")
    ax.bar([i + 0.2 for i in x], [m.zero_shot for m in rows], width=0.4, label="zero-shot accuracy")
    ax.set_xticks(list(x), [m.label for m in rows])
    ax.set_ylim(0, 1.05)
    ax.set_title("attack success before / after cleaning")
    ax.legend(fontsize=7)
    return _save(fig, out)


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:  # type: ignore[no-untyped-def]
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return out


def success_headers(models: Sequence[ModelRow]) -> list[str]:
    """The attack ids every model was evaluated on, in recipe order."""
    return list(dict.fromkeys(attack for m in models for attack in m.attack_success))


def _model_table(models: Sequence[ModelRow]) -> list[list[str]]:
    attacks = success_headers(models)
    success = ["attack success"] if len(attacks) <= 1 else [f"attack success ({a})" for a in attacks]
    table = [["model", "trained on", "zero-shot acc", *success, "linear probe", "retrieval R@1 (i->t)"]]
    for m in models:
        cells = [_fmt(m.attack_success.get(a)) for a in attacks] or ["n/a"]
        table.append([m.label, m.trained_on, _fmt(m.zero_shot), *cells, _fmt(m.linear_probe), _fmt(m.retrieval_r1)])
    return table


def write_report(out_dir: Path, title: str, models: Sequence[ModelRow], detectors: Sequence[DetectorRow],
                 facts: dict[str, Any], budget: float | None) -> dict[str, str]:
    """Write ``report.md``, ``report.html`` and the plots into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    roc = _plot_roc(detectors, out_dir / "roc.png")
    if roc:
        plots["ROC curves"] = roc
    success = _plot_success(models, out_dir / "attack_success.png")
    if success:
        plots["Attack success before/after"] = success
    curves = {m.label: m.loss_csv for m in models if m.loss_csv is not None and Path(m.loss_csv).exists()}
    if curves:
        plots["Loss curves"] = plot_losses(curves, out_dir / "loss_curves.png", "training loss")  # type: ignore[arg-type]

    model_table = _model_table(models)
    budget_txt = f"{budget:.1%}" if budget is not None else "budget"
    det_table = [["detector", "AUROC", f"recall @ {budget_txt}", f"precision @ {budget_txt}", "removed"]]
    det_table += [[d.name + (" (used to clean)" if d.chosen else ""), _fmt(d.auroc), _fmt(d.recall_at_budget),
                   _fmt(d.precision_at_budget), str(d.removed)] for d in detectors]
    md = [f"# {title}", ""]
    md += [f"- {k}: {v}" for k, v in facts.items()]
    md += ["", "## Models", "", *_md_table(model_table), "", f"*{ASR_DEFINITION}.*", ""]
    if detectors:
        md += ["## Detectors", "", *_md_table(det_table), ""]
    for name, path in plots.items():
        md += [f"## {name}", "", f"![{name}]({path.name})", ""]
    atomic_write_text(out_dir / "report.md", "\n".join(md))

    parts = [f"<h1>{html.escape(title)}</h1>", "<ul>"]
    parts += [f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in facts.items()]
    parts += ["</ul>", "<h2>Models</h2>", _html_table(model_table), f"<p><em>{html.escape(ASR_DEFINITION)}.</em></p>"]
    if detectors:
        parts += ["<h2>Detectors</h2>", _html_table(det_table)]
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts += [f"<h2>{html.escape(name)}</h2>", f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">']
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
            "</style></head><body>" + "\n".join(parts) + "</body></html>")
    atomic_write_text(out_dir / "report.html", page)
    return {"markdown": str(out_dir / "report.md"), "html": str(out_dir / "report.html"),
            **{name: str(p) for name, p in plots.items()}}


def _md_table(rows: list[list[str]]) -> list[str]:
    head, *body = rows
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in body)]


def _html_table(rows: list[list[str]]) -> str:
    head, *body = rows
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out) + "</table>"
