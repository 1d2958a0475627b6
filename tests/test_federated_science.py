"""Science check (slow): malicious clients plant a backdoor through fedavg; a defense keeps it out.

Continued pretraining of a clean tiny CLIP (trained in the module fixture on generated pairs) by 10
clients, 4 per round, 2 malicious with BadNets on half of their partitions (``federated_science.CONFIG``).
Each floor below was calibrated by measurement (see the report of the federated issue); the round-by-round
curves are printed on failure.
"""

from __future__ import annotations

from typing import Any

import pytest
from federated_science import CONFIG, run_science

pytestmark = pytest.mark.slow

DEFENSES = ("median", "inspection_fedavg")


@pytest.fixture(scope="module")
def science(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_science(tmp_path_factory.mktemp("fedscience"), CONFIG)
    print(f"federated science: clean model {result['clean_seconds']} s, everything {result['seconds']} s")
    return result


def _curves(result: dict[str, Any]) -> str:
    return "; ".join(f"{label}: " + " ".join(f"{r['round'] + 1}:{r['zero_shot']:.2f}/{r['asr'] or 0:.2f}"
                                           for r in line["curve"]) for label, line in result["lines"].items())


def test_fedavg_learns_the_malicious_clients_backdoor(science: dict[str, Any]) -> None:
    lines = science["lines"]
    assert lines["fedavg"]["final_asr"] >= 0.8, _curves(science)
    assert lines["fedavg_no_attack"]["final_asr"] <= 0.1, _curves(science)


def test_the_best_defense_keeps_the_backdoor_out_at_fedavg_accuracy(science: dict[str, Any]) -> None:
    lines = science["lines"]
    best = min(DEFENSES, key=lambda d: lines[d]["final_asr"])
    assert lines[best]["final_asr"] <= 0.1, _curves(science)
    assert lines[best]["final_zero_shot"] >= lines["fedavg_no_attack"]["final_zero_shot"] - 0.05, _curves(science)


def test_client_inspection_finds_the_malicious_clients(science: dict[str, Any]) -> None:
    aurocs = science["lines"]["fedavg"]["detection_auroc"]
    assert aurocs["eminspector"] >= 0.9, aurocs
