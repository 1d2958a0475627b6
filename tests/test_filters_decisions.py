"""Decisions over score tables, command-line specs, and the recall metrics on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest

from poisonlab.filters.decisions import DECISIONS, budget_count, exclusion_table, parse_decision
from poisonlab.filters.metrics import detection_metrics, markdown_summary, recall_report
from poisonlab.filters.scores import ScoreTable, key_ranks
from poisonlab.filters.specs import SpecError, parse_spec
from poisonlab.pipelines.registry import RegistryError


def table() -> ScoreTable:
    keys = [f"k{i:02d}" for i in range(10)]
    live = np.ones(10, bool)
    live[9] = False  # already out of the shards: never decided on
    a = np.array([0.9, 0.1, 0.5, 0.5, 0.2, np.nan, 0.8, 0.3, 0.5, 9.0])
    b = np.array([0.0, 0.95, 0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.9, 0.0])
    reasons = [""] * 10
    reasons[5] = "embed: undecodable_image: truncated"
    return ScoreTable(keys=keys, shards=np.array(["00000"] * 10), live=live, reasons=reasons,
                      columns={"a": a, "b": b}, info={})


def excluded(decision) -> dict[str, str]:  # type: ignore[no-untyped-def]
    t = table()
    verdict = decision.decide(t)
    return {t.keys[i]: verdict.reason[i] for i in verdict.rows()}


def test_threshold_excludes_scores_at_or_above_and_missing_by_rule() -> None:
    got = excluded(parse_decision("threshold:detector=a,value=0.5"))
    assert set(got) == {"k00", "k02", "k03", "k06", "k08", "k05"}
    assert got["k02"] == "a >= 0.5: score 0.5"
    assert got["k05"] == "no_score: embed: undecodable_image: truncated"
    kept = excluded(parse_decision("threshold:detector=a,value=0.5,missing=keep"))
    assert "k05" not in kept and "k09" not in kept


def test_top_fraction_is_a_budget_of_live_samples_with_ties_broken_by_key() -> None:
    got = excluded(DECISIONS.create("top_fraction", {"detector": "a", "fraction": 0.4, "missing": "keep"}))
    # 9 live samples -> ceil(3.6) = 4: 0.9, 0.8, then two of the three 0.5s in key order
    assert set(got) == {"k00", "k06", "k02", "k03"}
    assert got["k03"] == "a top 0.4: score 0.5, rank 4 of 9"
    assert budget_count(0.01, 100) == 1 and budget_count(0.011, 100) == 2 and budget_count(0.5, 3) == 2


def test_rules_combine_any_or_all() -> None:
    rules = [{"detector": "a", "threshold": 0.5}, {"detector": "b", "top_fraction": 0.2}]
    anyof = excluded(parse_decision({"name": "rules", "rules": rules, "missing": "keep"}))
    allof = excluded(parse_decision({"name": "rules", "rules": rules, "combine": "all", "missing": "keep"}))
    assert set(anyof) == {"k00", "k02", "k03", "k06", "k08", "k01"}
    assert set(allof) == {"k08"}
    assert allof["k08"] == "a >= 0.5 | b top 0.2: score 0.5, score 0.9, rank 2 of 9"


def test_exclusion_table_carries_keys_reasons_and_every_score() -> None:
    t = table()
    decision = parse_decision("top_fraction:detector=b,fraction=0.1")
    out = exclusion_table(t, decision.decide(t))
    assert out.column_names == ["key", "shard", "rule", "reason", "a", "b"]
    assert out.column("key").to_pylist() == ["k01"]  # only column b is decided on: k05 has a b score
    assert out.column("a").to_pylist() == [0.1]
    out = exclusion_table(t, parse_decision("threshold:detector=a,value=0.85").decide(t))
    assert out.column("key").to_pylist() == ["k00", "k05"] and out.column("a").to_pylist() == [0.9, None]


def test_decisions_refuse_bad_parameters_and_unknown_columns() -> None:
    with pytest.raises(RegistryError):
        parse_decision("top_fraction:detector=a,fraction=1.5")
    with pytest.raises(RegistryError, match="exactly one"):
        parse_decision({"name": "rules", "rules": [{"detector": "a"}]})
    with pytest.raises(KeyError, match="no score column 'c'"):
        parse_decision("threshold:detector=c,value=1").decide(table())


def test_specs() -> None:
    assert parse_spec("kdist") == ("kdist", "kdist", {})
    assert parse_spec("k5=kdist:k=5,space=cross,index.kind=exact") == (
        "k5", "kdist", {"k": 5, "space": "cross", "index": {"kind": "exact"}})
    assert parse_spec("ensemble:detectors=[kdist;dao],method=rank_max")[2] == {
        "detectors": ["kdist", "dao"], "method": "rank_max"}
    assert parse_spec('{"name": "rules", "rules": []}') == ("rules", "rules", {"rules": []})
    assert parse_spec("caption_frequency:near_duplicate=null")[2] == {"near_duplicate": None}
    for bad in ("kdist:k", "kd ist", "{not json"):
        with pytest.raises(SpecError):
            parse_spec(bad)


def test_detection_metrics_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, np.nan])
    labels = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0], bool)
    m = detection_metrics(scores, labels, key_ranks([str(i) for i in range(10)]), budgets=(0.1, 0.3))
    # 3 positives, 7 negatives; the NaN ranks last; positives beat 7, 6 and 1 negatives of 7
    assert m["auroc"] == pytest.approx((7 + 6 + 1) / 21)
    assert m["pr_auc"] == pytest.approx((1 + 2 / 3 + 3 / 9) / 3)
    assert m["fpr_at_95_tpr"] == pytest.approx(6 / 7)
    assert m["budgets"]["10%"] == {"removed": 1, "recall": pytest.approx(1 / 3), "precision": 1.0}
    assert m["budgets"]["30%"]["recall"] == pytest.approx(2 / 3) and m["unscored"] == 1


def test_recall_report_per_attack_on_a_score_table() -> None:
    t = table()
    report = recall_report(t, {"k00": "badnets", "k06": "badnets", "k01": "caption", "k09": "badnets"})
    assert report["samples"] == 9 and report["positives"] == 3 and report["missing_positives"] == 1
    a = report["detectors"]["a"]
    assert a["per_attack"]["badnets"]["auroc"] == pytest.approx(1.0)
    assert a["per_attack"]["caption"]["auroc"] == pytest.approx(1 / 6)  # above the unscored sample only
    assert "## caption" in markdown_summary(report)


def test_joint_recall_counts_the_places_other_attacks_take_in_one_budget() -> None:
    # column b ranks k01 (caption) first and k08 (badnets) second: alone against the clean samples badnets is
    # found within a 10% budget, but one budget over all nine samples removes only the caption pair
    report = recall_report(table(), {"k01": "caption", "k08": "badnets"}, budgets=(0.1, 0.25))
    badnets = report["detectors"]["b"]["per_attack"]["badnets"]
    assert badnets["budgets"]["10%"]["recall"] == 1.0
    assert badnets["joint_recall"] == {"10%": 0.0, "25%": 1.0}
    assert report["detectors"]["b"]["per_attack"]["caption"]["joint_recall"]["10%"] == 1.0
    text = markdown_summary(report)
    assert "J@10%" in text and "J@b is the share" in text
