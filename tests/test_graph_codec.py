"""The graph payload codec: round trips, deterministic bytes, and every refusal with its reason (never an
unpickle, never an allocation a header merely claims)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile import malicious_pickle

from poisonlab.pipelines.sample import Sample
from poisonlab.shards.dataset import get_modality, read_policy_for, write_dataset_record
from poisonlab.shards.graphs import GraphCaps, GraphError, decode_graph, encode_graph, probe_graph
from poisonlab.shards.reader import read_shard
from poisonlab.shards.writer import ShardWriter


def graph(n: int = 4, f: int = 3) -> dict[str, np.ndarray]:
    ring = np.array([[i, (i + 1) % n] for i in range(n)], dtype=np.int64)
    return {"edge_index": np.concatenate([ring, ring[:, ::-1]]).T.copy(), "x": np.ones((n, f), np.float32),
            "y": np.array([2], np.int64)}


def savez(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_round_trip_and_deterministic_bytes() -> None:
    data = encode_graph(graph())
    assert encode_graph(graph()) == data  # no timestamps: the same arrays give the same bytes
    back = decode_graph(data)
    assert set(back) == {"edge_index", "x", "y"} and all(np.array_equal(back[k], graph()[k]) for k in back)
    assert probe_graph(data) == {"nodes": 4, "edges": 8}
    assert probe_graph(savez(**graph())) == {"nodes": 4, "edges": 8}  # np.savez output reads too


def test_object_arrays_and_pickles_are_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    objects = np.empty((1, 1), dtype=object)
    objects[0, 0] = pickle.loads(pickle.dumps({"a": 1}))
    cases = {
        "object array": (savez(edge_index=np.zeros((2, 0), np.int64), x=objects), "holds Python objects"),
        "pickle": (malicious_pickle(marker), "is a pickle"),
        "bare npy": (b"\x93NUMPY" + b"\x00" * 20, "bare .npy"),
        "empty": (b"", "empty_graph"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(GraphError, match=reason):
            decode_graph(data)
        assert not marker.exists(), name


def test_a_pickled_member_inside_the_zip_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("edge_index.npy", malicious_pickle(marker))
        archive.writestr("x.npy", b"")
    with pytest.raises(GraphError, match="no valid .npy header"):
        decode_graph(buffer.getvalue())
    assert not marker.exists()


@pytest.mark.parametrize("arrays, caps, reason", [
    (graph(50), GraphCaps(max_nodes=10), "graph_bomb: 50 nodes"),
    (graph(50), GraphCaps(max_edges=10), "graph_bomb: 100 edges"),
    (graph(10, 8), GraphCaps(max_feature_values=40), "graph_bomb: features"),
    ({**graph(), "junk": np.zeros(100)}, GraphCaps(max_extra_values=10), "optional arrays"),
    ({**graph(), **{f"a{i}": np.zeros(1) for i in range(20)}}, GraphCaps(), "over the cap of 16 arrays"),
])
def test_caps_are_checked_from_the_headers(arrays: dict, caps: GraphCaps, reason: str) -> None:
    with pytest.raises(GraphError, match=reason):
        decode_graph(savez(**arrays), caps)


def test_a_compressed_graph_bomb_is_refused_before_it_is_inflated() -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, edge_index=np.zeros((2, 3_000_000), np.int64), x=np.zeros((1, 1), np.float32))
    assert len(buffer.getvalue()) < 200_000  # 48 MB of edges in a small file
    with pytest.raises(GraphError, match="graph_bomb: 3000000 edges exceed the cap"):
        decode_graph(buffer.getvalue())


def test_a_zip_listing_many_entries_is_refused_from_its_end_record() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(5000):
            archive.writestr(f"{i}", b"")
    with pytest.raises(GraphError, match="graph_bomb: the zip lists 5000 entries"):
        decode_graph(buffer.getvalue())


@pytest.mark.parametrize("method, flags", [(99, 0), (0, 1)])  # an unknown compression method; an encrypted member
def test_members_zipfile_cannot_open_are_refused_not_a_crash(method: int, flags: int) -> None:
    data = bytearray(encode_graph(graph()))
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(sig)
        while at >= 0:
            data[at + flag_at : at + flag_at + 2] = flags.to_bytes(2, "little")
            data[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
            at = data.find(sig, at + 4)
    with pytest.raises(GraphError, match="undecodable_graph"):
        decode_graph(bytes(data))


@pytest.mark.parametrize("arrays, reason", [
    ({**graph(), "edge_index": graph()["edge_index"].astype(np.int32)}, "edge_index must be int64"),
    ({**graph(), "edge_index": np.zeros((3, 2), np.int64)}, "shape 2 x E"),
    ({**graph(), "x": np.ones((4, 3), np.float64)}, "x must be float32"),
    ({**graph(), "edge_index": np.array([[0], [4]], np.int64)}, "outside 0..3"),
    ({**graph(), "edge_index": np.array([[-1], [0]], np.int64)}, "outside 0..3"),
    ({"x": np.ones((2, 2), np.float32)}, "missing array"),
    ({**graph(), "y": np.array(["a"])}, "non-numeric"),
    ({**graph(), "node_mask": np.zeros(3)}, "per-node array 'node_mask' of shape \\(3,\\) needs 4 rows"),
    ({**graph(), "node_mask": np.zeros(())}, "per-node array"),
])
def test_types_shapes_and_edge_range_are_validated(arrays: dict, reason: str) -> None:
    with pytest.raises(GraphError, match=reason):
        decode_graph(savez(**arrays))


def test_the_graph_modality_reads_npz_with_the_graph_check() -> None:
    policy = get_modality("graph").read_policy()
    assert policy.payload_extensions == frozenset({"npz"}) and policy.payload_probe == "graph"
    assert dict(policy.probe_params)["max_nodes"] == GraphCaps().max_nodes and not policy.probe_images
    assert not policy.require_text  # descriptions are optional (graph-only contrastive learning needs none)


def test_the_reader_sets_nodes_and_edges_and_takes_graphs_without_descriptions(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, "00000") as writer:
        writer.write(Sample("a", encode_graph(graph(6)), "npz", None, {"nodes": 999}))  # a lying KEY.json
        writer.write(Sample("b", encode_graph({**graph(3), "node_mask": np.ones(3, bool)}), "npz", "a ring"))
        writer.close()
    write_dataset_record(tmp_path, "graph", ("npz",))
    samples = list(read_shard(tmp_path, "00000", read_policy_for(tmp_path)))
    assert [(s.key, s.status, s.meta["nodes"], s.meta["edges"]) for s in samples] == [("a", "ok", 6, 12),
                                                                                      ("b", "ok", 3, 6)]


def test_damaged_payloads_only_ever_raise_graph_errors() -> None:
    """Random byte flips and cuts of a good payload: a reason every time, never another exception."""
    good = encode_graph(graph())
    rng = np.random.default_rng(0)
    for _ in range(2000):
        data = bytearray(good)
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 5))):
            data[at] = int(rng.integers(256))
        cut = bytes(data[: int(rng.integers(len(data)))] if rng.random() < 0.2 else data)
        try:
            decode_graph(cut)
        except GraphError:
            pass


@pytest.mark.parametrize("compressed", [False, True])
def test_large_and_fortran_members_read_as_np_load_reads_them(compressed: bool) -> None:
    """Members over 1 MiB are read after the caps (not with their header); both ways give np.load's arrays."""
    arrays = {**graph(40_000, 8), "node_w": np.asfortranarray(np.arange(80_000, dtype=np.float32).reshape(40_000, 2))}
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    back, expected = decode_graph(buffer.getvalue()), np.load(io.BytesIO(buffer.getvalue()))
    for name in arrays:
        assert back[name].dtype == expected[name].dtype and np.array_equal(back[name], expected[name])
        assert back[name].flags.f_contiguous == expected[name].flags.f_contiguous and back[name].flags.writeable


def test_a_member_shorter_than_its_header_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # a valid CRC over a truncated body
        archive.writestr("edge_index.npy", _npy(np.zeros((2, 0), np.int64)))
        archive.writestr("x.npy", _npy(np.ones((4, 3), np.float32))[:-8])
    with pytest.raises(GraphError, match="undecodable_graph: array 'x' is shorter than its header's shape"):
        decode_graph(buffer.getvalue())


def _npy(array: np.ndarray) -> bytes:
    body = io.BytesIO()
    np.lib.format.write_array(body, array)
    return body.getvalue()
