"""The demo tells the whole story: a backdoor learned, found by the default detector, gone after cleaning.

``poisonlab demo`` as a new user runs it (its own defaults, the 4,000-pair recipe), about 3 minutes on 2 cores.
What it prints must fit on one screen; the numbers are read from the steps it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHANCE = 1 / 24  # the generated dataset's classes


@pytest.mark.slow
def test_the_demo_plants_finds_and_removes_a_backdoor(cli, tmp_path: Path) -> None:
    from poisonlab.flows.cli import app

    out = tmp_path / "demo"
    res = cli.invoke(app, ["demo", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    print("\n" + res.output)
    assert len(lines) <= 20, res.output
    assert "report.html" in res.output
    steps = out / "steps"
    models = {label: per_attack["badnets"] for label, per_attack in
              json.loads((steps / "evaluate.json").read_text()).items()}
    detect = json.loads((steps / "detect.json").read_text())["detectors"]["default"]
    clean = json.loads((steps / "clean.json").read_text())
    # the victim learned the backdoor while learning the task (measured: ASR 1.000, zero-shot 0.244)
    assert models["victim"]["attack_success"] >= 0.8
    assert models["victim"]["zero_shot"] >= 4 * CHANCE
    # the default detector, chosen by the recipe (no oracle, no knowledge of the attack), finds it
    # (measured: AUROC 0.993, all 80 poisoned pairs in its top 5%)
    assert clean["detector"] == "default" and not clean["oracle"]
    assert detect["auroc"] >= 0.95
    assert clean["poisoned_removed"] >= 0.95 * clean["poisoned_total"]
    # and the model retrained without what it flagged is not fooled (measured: ASR 0.011)
    assert models["cleaned"]["attack_success"] <= 0.1
    assert models["cleaned"]["zero_shot"] >= 3 * CHANCE
