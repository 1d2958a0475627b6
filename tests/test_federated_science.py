"""Science check (slow): client inspection finds the malicious clients; defenses keep fedavg's accuracy.

Continued pretraining of the session's clean baseline (the science run's tiny CLIP, ``recipes/multi_attack.yaml``,
trained on 20,000 generated pairs: zero-shot 0.84 here) by 10 clients, 4 per round, 2 malicious with BadNets on half of
their partitions, 5 rounds of 10 local steps (``federated_science.CONFIG``).

What is asserted is what was measured to hold within the CPU budget. The issue's attack floor is NOT
asserted: in this setting fedavg's ASR stayed at 0.00-0.01 over 5 rounds; it needs about 40 local steps at
lr 1e-3 per round and more rounds than CI can pay for (8 rounds: 0.30, 0.40, 0.42, 0.50 after rounds 4, 6,
7, 8; the curves are in benchmarks/results/2026-12-03-federated-science.md), so "fedavg ASR >= 0.8" fails in
this budget and the defense-ASR floor (<= 0.1) would pass without meaning anything. The round-by-round
curves are printed on failure.
"""

from __future__ import annotations

from typing import Any

import pytest
from federated_science import CONFIG, run_science

pytestmark = pytest.mark.slow

MALICIOUS = {0, 1}
DEFENSES = ("median", "inspection_fedavg")


@pytest.fixture(scope="module")
def science(tmp_path_factory: pytest.TempPathFactory, science_experiment: dict[str, Any]) -> dict[str, Any]:
    """Continues the session's clean baseline (trained on the 20,000 clean pairs of ``recipes/multi_attack.yaml``)."""
    root = tmp_path_factory.mktemp("fedscience")
    start = science_experiment["root"] / "runs" / "baseline"
    result = run_science(root, {**CONFIG, "start": str(start)})
    result["root"] = root
    print(f"federated science: clean model {result['clean_seconds']} s, everything {result['seconds']} s")
    return result


def _curves(result: dict[str, Any]) -> str:
    return "; ".join(f"{label}: " + " ".join(f"{r['round'] + 1}:{r['zero_shot']:.2f}/{r['asr'] or 0:.2f}"
                                           for r in line["curve"]) for label, line in result["lines"].items())


def test_client_inspection_finds_the_malicious_clients(science: dict[str, Any]) -> None:
    """The issue's floor: AUROC >= 0.9 over (client, round) of the fedavg run (measured 1.0)."""
    aurocs = science["lines"]["fedavg"]["detection_auroc"]
    assert aurocs["eminspector"] >= 0.9, aurocs


def test_inspection_excludes_malicious_clients_only(science: dict[str, Any]) -> None:
    """The ratio rule (no oracle) left out malicious participations and no honest client."""
    import pyarrow.parquet as pq

    rounds = science["root"] / "fed" / "runs" / "inspection_fedavg" / "rounds"
    rows = [r for path in sorted(rounds.glob("*/inspection.parquet")) for r in pq.read_table(path).to_pylist()]
    flagged = [r for r in rows if r["flagged"]]
    malicious = [r for r in rows if r["client"] in MALICIOUS]
    assert flagged and all(r["client"] in MALICIOUS for r in flagged), flagged
    assert len(flagged) >= len(malicious) - 1, (flagged, malicious)


def test_defenses_keep_the_accuracy_of_fedavg_without_attackers(science: dict[str, Any]) -> None:
    lines = science["lines"]
    reference = lines["fedavg_no_attack"]["final_zero_shot"]
    for defense in DEFENSES:
        assert lines[defense]["final_zero_shot"] >= reference - 0.05, _curves(science)
