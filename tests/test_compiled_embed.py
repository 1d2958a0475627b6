"""Embedding with ``torch.compile``d encoders: one graph whatever the batches, the same bytes however the embed
step runs them, the eager model's vectors to the last bits, and a compiler's wrong answer refused."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_synth
from torch._dynamo.utils import counters

from poisonlab.filters.embed import EmbedConfig
from poisonlab.filters.pipeline import embed_shards
from poisonlab.filters.store import read_shard_embeddings
from poisonlab.models.compiled import CompiledEncoder, CompiledMismatchError
from poisonlab.models.zoo import ModelSpec

TINY = ModelSpec("poisonlab-tiny-32")


class _Block(torch.nn.Module):
    """A transformer MLP block over tokens, pooled: the fused kind of work compiling is for."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.up, self.down = torch.nn.LayerNorm(16), torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(self.norm(x)))).sum(dim=1)


@pytest.fixture(autouse=True)
def fresh_compiler() -> None:
    """Every test compiles afresh (dynamo would serve one test's block from another's graphs)."""
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_one_graph_serves_every_batch_and_a_batch_gets_the_same_floats_whichever_came_first() -> None:
    torch.manual_seed(0)
    block, rows = _Block().eval(), torch.randn(80, 5, 16)
    cuts = ((0, 7), (7, 8), (8, 24), (24, 80))  # 7 rows, 1, a full 16, and 56 (run as 16, 16, 16, 8)
    outputs = []
    for order in (cuts, cuts[::-1]):
        torch._dynamo.reset()  # compile afresh, from this order's first batch
        encoder, before, out = CompiledEncoder(block, 16), _graphs(), {}
        with torch.inference_mode():
            for start, stop in order:
                out[start] = encoder(rows[start:stop])
        assert _graphs() - before == 1
        outputs.append(torch.cat([out[start] for start, _ in cuts]))
    assert outputs[0].shape == (80, 8) and torch.equal(outputs[0], outputs[1])
    with torch.inference_mode():
        torch.testing.assert_close(outputs[0], block(rows), rtol=1e-5, atol=1e-5)


def test_streams_that_start_together_compile_once_and_a_new_thread_count_compiles_its_own() -> None:
    torch.manual_seed(1)
    block, rows = _Block().eval(), torch.randn(16, 5, 16)
    encoder, before, results = CompiledEncoder(block, 16), _graphs(), {}

    def stream(i: int) -> None:
        with torch.inference_mode():
            results[i] = encoder(rows)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _graphs() - before == 1 and all(torch.equal(r, results[0]) for r in results.values())
    old = torch.get_num_threads()
    torch.set_num_threads(1 if old > 1 else 2)
    try:
        with torch.inference_mode():
            encoder(rows)
    finally:
        torch.set_num_threads(old)
    assert _graphs() - before == 2  # inductor's kernels are written for the thread count that compiles them


class _Miscompiled:
    """An encoder whose compiled form answers wrongly (as inductor's dynamic AVX2 kernels did: NaN)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return -x if torch.compiler.is_compiling() else x


def test_a_compiled_encoder_that_disagrees_with_the_eager_one_is_refused_before_any_output() -> None:
    with torch.inference_mode(), pytest.raises(CompiledMismatchError, match="at cosine .* from the eager model's .* without compile=true"):
        CompiledEncoder(_Miscompiled(), 4)(torch.ones(3, 5))
    with torch.inference_mode(), pytest.raises(CompiledMismatchError, match="not finite, unlike the eager model's"):
        CompiledEncoder(lambda x: x / 0 if torch.compiler.is_compiling() else x, 4)(torch.ones(3, 5))
    with pytest.raises(ValueError, match="rows"):
        CompiledEncoder(_Block(), 0)


@pytest.mark.slow
def test_a_compiled_embedder_writes_the_same_bytes_in_any_streams_and_stays_at_the_eager_vectors(tmp_path: Path) -> None:
    """Batches of 3 leave a batch of one at the end of each 40-sample shard."""
    shards = make_synth(tmp_path / "shards", samples=80, per_shard=40)

    def store(name: str, spec: str, streams: int) -> Path:
        config = EmbedConfig(TINY, batch_size=3, embedder=spec, streams=streams)
        return Path(embed_shards(shards, tmp_path / name, config)["store"])

    one, two = store("one", "open_clip:compile=true", 1), store("two", "open_clip:compile=true", 2)
    eager = store("eager", "open_clip", 1)
    assert {p.name: p.read_bytes() for p in one.glob("*.npz")} == {p.name: p.read_bytes() for p in two.glob("*.npz")}
    assert json.loads((one / "model.json").read_text())["settings"]["compiled"] is True
    assert json.loads((eager / "model.json").read_text())["settings"]["compiled"] is False
    for shard in ("00000", "00001"):
        compiled, plain = read_shard_embeddings(one, shard), read_shard_embeddings(eager, shard)
        for space in ("image", "text"):
            assert compiled.ok[space].all()
            np.testing.assert_allclose(compiled.vectors[space], plain.vectors[space], atol=1e-5)
