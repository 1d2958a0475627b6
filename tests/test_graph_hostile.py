"""Hostile graph payloads through ``poison``: object arrays, pickles, graph bombs and out-of-range edges are
errors with their reasons in the shard's accounting and the run's summary, never a crash, never unpickled."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hostile import malicious_pickle

from poisonlab.attacks import apply_trigger_to_eval
from poisonlab.flows.cli import app
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import read_policy_for, write_dataset_record
from poisonlab.shards.graph_synth import GraphSynthSource, GraphSynthSpec
from poisonlab.shards.plan import finalize_folder
from poisonlab.shards.reader import read_shard
from poisonlab.shards.writer import ShardWriter

SPEC = GraphSynthSpec(samples=12, seed=4, samples_per_shard=12)


def _npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def hostile_payloads(marker: Path) -> dict[int, tuple[bytes, str]]:
    """Sample index -> (payload, a substring of the reason it must be refused with)."""
    objects = np.empty((2, 2), dtype=object)
    return {
        2: (_npz(edge_index=np.zeros((2, 0), np.int64), x=objects), "refused_graph: array 'x' holds Python objects"),
        4: (malicious_pickle(marker), "refused_graph: payload is a pickle"),
        6: (_npz(edge_index=np.zeros((2, 3_000_000), np.int64), x=np.zeros((1, 1), np.float32)),
            "graph_bomb: 3000000 edges exceed the cap"),
        8: (_npz(edge_index=np.zeros((2, 1), np.int64), x=np.zeros((200_000, 1), np.float32)),
            "graph_bomb: 200000 nodes exceed the cap"),
        10: (_npz(edge_index=np.array([[0], [9]], np.int64), x=np.zeros((2, 1), np.float32)), "outside 0..1"),
    }


@pytest.fixture
def hostile_graphs(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """One shard of generated graphs, five of them replaced by hostile payloads (the sidecar says "ok")."""
    marker = tmp_path / "pwned"
    out = tmp_path / "hostile"
    bad = hostile_payloads(marker)
    reasons = {}
    with ShardWriter(out, "00000") as writer:
        for index, sample in enumerate(GraphSynthSource(SPEC)("00000", [])):
            if index in bad:
                sample = Sample(sample.key, bad[index][0], "npz", sample.text, dict(sample.meta))
                reasons[sample.key] = bad[index][1]
            writer.write(sample)
        stats = writer.close()
    finalize_folder(out, [stats])
    write_dataset_record(out, "graph", ("npz",))
    return out, reasons, marker


def test_the_reader_refuses_hostile_graphs_with_reasons(hostile_graphs: tuple[Path, dict[str, str], Path]) -> None:
    src, reasons, marker = hostile_graphs
    samples = {s.key: s for s in read_shard(src, "00000", read_policy_for(src))}
    for key, reason in reasons.items():
        assert samples[key].status == "error" and reason in (samples[key].reason or ""), samples[key].reason
    assert sum(s.is_live for s in samples.values()) == 12 - len(reasons) and not marker.exists()


def test_poison_accounts_hostile_graphs_as_errors(cli, hostile_graphs: tuple[Path, dict[str, str], Path],
                                                  tmp_path: Path) -> None:
    src, reasons, marker = hostile_graphs
    out = tmp_path / "out"
    res = cli.invoke(app, ["poison", "--in", str(src), "--out", str(out), "--attack", "subgraph_trigger",
                           "--target", "house", "--count", "12", "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["poisoned"] == 12 - len(reasons) and result["failed"] == len(reasons)
    assert any("graph_bomb" in r for r in result["failed_reasons"]) and any("refused_graph" in r
                                                                            for r in result["failed_reasons"])
    rows = {r["key"]: r for r in pq.read_table(out / "00000.parquet").to_pylist()}
    for key, reason in reasons.items():
        assert rows[key]["status"] == "error" and reason in rows[key]["reason"]
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["by_status"]["error"] == len(reasons) and stats["written"] == 12 - len(reasons)
    # the same folder as an evaluation split: the eval-trigger job reads it with the same checks
    ev = apply_trigger_to_eval(src, out, tmp_path / "ev")
    assert ev["by_status"]["error"] == len(reasons) and sum(ev["by_status"].values()) == 12
    assert not marker.exists()
