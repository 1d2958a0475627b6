"""An encoder compiled with ``torch.compile``: one fixed input shape, safe to call from several threads, and
checked against the eager model before its first output is used.

Why: on a CPU a small model spends a fifth of its time outside its matrix products (layer norms, GELUs,
residual adds, softmax, each a pass over the activations); inductor fuses them. On 2 CPU cores that gained
1.13x for the tiny CLIP's image encoder alone (one 1-thread batch of 64: 63 against 72 ms) and nothing in
``embed``, where the input side shares the cores (``benchmarks/results/2026-12-06-embed-compile.md``): it
is an option, for accelerators and long runs, not the default.

What it must not change: the embed step's promise that the same configuration writes the same bytes with
any number of workers or streams. So:

- one shape: every batch is padded with zero rows to ``rows`` (the embed step's batch size; a longer one
  runs in pieces of that size). A dynamic batch dimension would compile once, but dynamo specialises sizes
  of one and storage offsets into further graphs (which graph a batch met would then depend on the batches
  before it), and inductor's dynamic-shape AVX2 kernels returned NaN for open_clip's ViT (torch 2.14, with
  ``ATEN_CPU_CAPABILITY=avx2``) where the static ones are right. A row's floats never depend on the other
  rows of a fixed-shape batch: these encoders have no operation across rows;
- the first call at each torch thread count compiles under a lock, so streams that start together wait
  for one compilation (inductor writes C++ for the thread count, and dynamo compiles again when it changes);
- a compiler bug must not become a store of wrong vectors: the first compiled batch at each thread count is
  compared with the eager model on the same batch, and a row pointing elsewhere (cosine under 0.999, or not
  finite) is an error (``CompiledMismatchError``) telling the user to run without compiling.

The floats differ from eager ones in the last bits (fused kernels sum in another order), so compiled and
eager stores are not byte-identical; each is the same from run to run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]
MIN_COSINE = 0.999  # compiled against eager, row by row: float noise leaves 1 - 1e-6 on the tiny CLIP in fp32


class CompiledMismatchError(RuntimeError):
    """The compiled encoder's output is not the eager encoder's (a compiler bug): nothing is written."""


class CompiledEncoder:
    """``fn`` (a batch of ``rows`` or fewer to as many outputs) compiled for batches of exactly ``rows``."""

    def __init__(self, fn: Encoder, rows: int) -> None:
        if rows < 1:
            raise ValueError(f"rows ({rows}) must be at least 1")
        self._fn, self.rows = fn, rows
        self._compiled = torch.compile(fn, dynamic=False)
        self._checked: set[int] = set()  # torch thread counts it has compiled and checked at
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] > self.rows:
            return torch.cat([self(batch[start:start + self.rows]) for start in range(0, batch.shape[0], self.rows)])
        padded = _padded(batch, self.rows)
        threads = torch.get_num_threads()
        if threads in self._checked:
            out = self._compiled(padded)
        else:
            with self._lock:  # a stream that waited here finds the count checked: it runs the eager model no more
                out = self._compiled(padded)
                if threads not in self._checked:
                    self._check(padded, out, batch.shape[0])
                    self._checked.add(threads)
        return out[: batch.shape[0]]

    def _check(self, padded: torch.Tensor, out: torch.Tensor, rows: int) -> None:
        """The batch's real rows point where the eager model's do (directions are what an embedding store
        keeps, and a cosine bound holds for fp16 autocast as for fp32)."""
        compiled, eager = out[:rows].float(), self._fn(padded)[:rows].float()
        cosine = torch.nn.functional.cosine_similarity(compiled, eager, dim=-1)
        both_zero = (compiled.norm(dim=-1) == 0) & (eager.norm(dim=-1) == 0)
        cosine = torch.where(both_zero, torch.ones_like(cosine), cosine)
        finite = bool(torch.isfinite(compiled).all())
        if not finite or not bool((cosine >= MIN_COSINE).all()):
            how = f"at cosine {cosine.min().item():.4f} from" if finite else "that are not finite, unlike"
            raise CompiledMismatchError(f"torch.compile gave vectors {how} the eager model's (a compiler bug on "
                                        "this machine); embed without compile=true")


def _padded(batch: torch.Tensor, rows: int) -> torch.Tensor:
    """``batch`` followed by zero rows up to ``rows``, contiguous, of the same kind (an inference tensor or
    not: dynamo guards on it, as on strides and storage offsets)."""
    if batch.shape[0] == rows and batch.is_contiguous() and batch.storage_offset() == 0:
        return batch
    with torch.inference_mode(batch.is_inference()):
        out = torch.zeros((rows, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        out[: batch.shape[0]] = batch
    return out
