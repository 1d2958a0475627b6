"""The federated science setting, shared by ``test_federated_science.py`` and calibration runs.

``threads: 1``: one thread per training, deterministic and the most work per CPU second on a shared
machine (two threads made the clean model's training 6x slower per step under load here).

Continued pretraining of a clean tiny CLIP (trained here on generated pairs) by 10 federated clients, 4 per
round, 2 of them malicious with BadNets on their own partitions; fedavg, fedavg over the honest clients only
(the no-attack reference), coordinate median and client inspection + fedavg run the same rounds.

    python tests/federated_science.py OUT [key=value ...]   # a calibration run: prints the curves and times
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = {
    "clean_samples": 4000, "clean_epochs": 4, "clean_lr": 1e-3,
    "samples": 3000, "eval_per_class": 20,
    "rounds": 5, "clients_per_round": 4, "local_steps": 10, "batch_size": 32, "lr": 5e-4, "rate": 0.5,
    "threads": 1, "evaluate_every": 1, "inspection_score": "eminspector", "inspection_ratio": 1.5,
    "start": "", "boost": 0.0,
}


def clean_model(root: Path, cfg: dict[str, Any]) -> Path:
    """A clean tiny CLIP trained on its own generated pairs (another seed than the clients' data)."""
    from conftest import make_synth

    from poisonlab.training import TrainSettings
    from poisonlab.training.trainer import train

    data = make_synth(root / "clean_data", samples=cfg["clean_samples"], seed=1, per_shard=1000)
    settings = TrainSettings(epochs=cfg["clean_epochs"], batch_size=64, lr=cfg["clean_lr"], warmup_steps=50, decay_fraction=1.0,
                             workers=0, device="cpu", log_every=50, threads=cfg["threads"])
    train(data, root / "clean_run", settings, resume=True, progress=False)
    return root / "clean_run"


def recipe(root: Path, start: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    train = {"model": "poisonlab-tiny-32", "batch_size": cfg["batch_size"], "lr": cfg["lr"], "warmup_steps": 0, "decay_fraction": 1.0,
             "epochs": 100, "workers": 0, "device": "cpu", "threads": cfg["threads"], "log_every": 100}
    return {
        "name": "science", "seed": 0,
        "data": {"synth": {"samples": cfg["samples"], "samples_per_shard": 500, "eval_per_class": cfg["eval_per_class"]}},
        "partition": {"clients": 10, "scheme": "iid"},
        "malicious": {"clients": [0, 1], "attack": {"attack": "badnets", "target": "red circle", "rate": cfg["rate"],
                                                    "params": {"pattern": "checkerboard", "placement": "bottom_right"}},
                      "boost": cfg["boost"] or None},
        "start": str(start), "rounds": cfg["rounds"], "clients_per_round": cfg["clients_per_round"],
        "local_steps": cfg["local_steps"], "train": train, "probe": {"images": 64},
        "evaluate_every": cfg["evaluate_every"],
        "aggregators": [{"name": "fedavg"}, {"name": "fedavg", "id": "fedavg_no_attack", "honest_only": True},
                        {"name": "median"},
                        {"name": "fedavg", "id": "inspection_fedavg",
                         "inspection": {"score": cfg["inspection_score"], "ratio": cfg["inspection_ratio"]}}],
    }


def run_science(root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Train the clean model, run every aggregator's rounds; returns the comparison and the times."""
    from poisonlab.federated.recipe import parse_federated_recipe
    from poisonlab.flows.federate import run_federated
    from poisonlab.flows.runtime import RunnerSpec

    began = time.perf_counter()
    start = Path(cfg["start"]) if cfg.get("start") else clean_model(root, cfg)
    clean_seconds = time.perf_counter() - began
    spec = parse_federated_recipe(recipe(root, start, cfg))
    run_federated(spec, root / "fed", RunnerSpec(executor="local", progress=False, quiet=True), root)
    comparison = json.loads((root / "fed" / "report" / "comparison.json").read_text())
    lines = {line["aggregator"]: line for line in comparison["aggregators"]}
    return {"lines": lines, "clean_seconds": round(clean_seconds, 1),
            "seconds": round(time.perf_counter() - began, 1)}


def _print(result: dict[str, Any]) -> None:
    print(f"clean model {result['clean_seconds']} s, total {result['seconds']} s")
    for label, line in result["lines"].items():
        curve = " ".join(f"r{r['round'] + 1}:{r['zero_shot']:.3f}/{(r['asr'] or 0):.3f}" for r in line["curve"])
        print(f"{label}: final zs {line['final_zero_shot']:.3f} asr {line['final_asr']:.3f} "
              f"auroc {line['detection_auroc']} excluded {line['inspection_excluded']}\n  {curve}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    overrides = dict(item.split("=", 1) for item in sys.argv[2:])
    config = {**CONFIG, **{k: type(CONFIG[k])(v) if CONFIG[k] is not None else int(v) for k, v in overrides.items()}}
    print(config, flush=True)
    _print(run_science(Path(sys.argv[1]), config))
