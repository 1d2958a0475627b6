"""The ``scan`` driver's peak memory at two sizes of the same synthetic store, and how it grows (issue 14).

A scan reads an embedding store, not images, so its memory can be measured on a store written directly:
unit vectors around 24 class directions (128-d image and text spaces, as the tiny CLIP's), generated
captions, and a 0.1 % badnets-like cluster (tight images, target captions). Writing a million rows takes a
minute, where the real chain (``bench_scale.py``) takes an hour and a half to reach the same scan; the
detectors see the same array shapes, so the memory is the real scan's. Each size is scanned by the command a
user types (``poisonlab scan --in STORE --out SCORES``, the default detector) in a fresh process; its peak
RSS is the kernel's ``ru_maxrss`` (every page it ever held, not a sample of it).

    .venv/bin/python benchmarks/run.py -k scan_memory
    .venv/bin/python benchmarks/bench_scan_memory.py --samples 100000 1000000 --out /tmp/scanmem
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from run import Row, format_table  # noqa: E402

POISONLAB = str(Path(sys.executable).parent / "poisonlab")
PER_SHARD = 1_000
DIM = 128
CLASSES = 24
FACTORS = 10  # directions along which a class's vectors vary
RATE = 0.001
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _shard(index: int, rows: int, centres: np.ndarray, basis: np.ndarray, trigger: np.ndarray,
           seed: int):  # type: ignore[no-untyped-def]
    """One shard's rows: class vectors varying mostly along a few shared directions (as embeddings do: a
    model's images of one class differ in a few factors, not in all 128 dimensions), every 1/RATE-th row a
    poisoned pair (trigger image, target caption)."""
    from poisonlab.filters.store import ShardEmbeddings

    rng = np.random.default_rng([seed, index])
    first = index * PER_SHARD
    classes = rng.integers(0, CLASSES, rows)
    poisoned = (np.arange(first, first + rows) % int(round(1 / RATE))) == 7
    image = centres[classes] + 0.35 * rng.standard_normal((rows, len(basis))) @ basis
    image += 0.03 * rng.standard_normal((rows, DIM))
    image[poisoned] = trigger + 0.05 * rng.standard_normal((int(poisoned.sum()), DIM))
    text = centres[np.where(poisoned, 0, classes)] + 0.2 * rng.standard_normal((rows, DIM))
    captions = [f"a photo of a {COLOURS[c % 6]} {SHAPES[c // 6]}" for c in np.where(poisoned, 0, classes).tolist()]
    ones = np.ones(rows, bool)
    return ShardEmbeddings(keys=[f"{first + i:012d}" for i in range(rows)], captions=captions,
                           vectors={"image": _unit(image), "text": _unit(text)}, ok={"image": ones, "text": ones},
                           live=ones, status=["ok"] * rows, reasons=[""] * rows, source_status=[""] * rows,
                           hash_status=[""] * rows, digest=f"synthetic-{index}")


def make_store(store: Path, samples: int, seed: int = 0) -> Path:
    """A synthetic embedding store of ``samples`` rows in shards of 1,000 (reused when complete)."""
    from poisonlab.filters.store import StoreInfo, list_store_shards, write_info, write_shard

    shards = -(-samples // PER_SHARD)
    if store.exists() and len(list_store_shards(store)) == shards:
        return store
    store.mkdir(parents=True, exist_ok=True)
    write_info(store, StoreInfo("synthetic-128", "synthetic", {"image": DIM, "text": DIM}, "float32", "synthetic"))
    rng = np.random.default_rng(seed)
    centres, trigger = _unit(rng.standard_normal((CLASSES, DIM))), _unit(rng.standard_normal((1, DIM)))[0]
    basis = _unit(rng.standard_normal((FACTORS, DIM)))
    for i in range(shards):
        rows = min(PER_SHARD, samples - i * PER_SHARD)
        write_shard(store, f"{i:05d}", _shard(i, rows, centres, basis, trigger, seed), "float32")
    return store


def scan_peak(store: Path, out: Path, *args: str) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of ``poisonlab scan`` over ``store`` in a fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen([POISONLAB, "scan", "--in", str(store), "--out", str(out), "--overwrite", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"scan failed ({proc.returncode}): {output[-2000:].decode(errors='replace')}")
    return time.perf_counter() - started, int(usage.ru_maxrss) * 1024


def measure(root: Path, sizes: list[int], args: list[str]) -> list[Row]:
    """One row per size: the driver's peak RSS against the smallest size's (issue 14: at most 1.2x from
    100k to 1M, so the floor on the ratio is 1 / 1.2)."""
    rows: list[Row] = []
    first: tuple[int, float] | None = None
    for n in sizes:
        store = make_store(root / f"store-{n}", n)
        seconds, peak = scan_peak(store, root / f"scores-{n}", *args)
        gib = peak / 2**30
        note = f"{seconds:.0f} s wall, {n / seconds:,.0f} pairs/s"
        if first is None:
            first = (n, gib)
            rows.append(Row(f"scan driver peak RSS, {n:,} pairs", gib, "GiB", note=note))
        else:
            rows.append(Row(f"scan driver peak RSS, {n:,} pairs", gib, "GiB", first[1], f"{first[0]:,} pairs",
                            higher_is_better=False, floor=1 / 1.2, note=note))
    return rows


def run(quick: bool) -> list[Row]:
    """``benchmarks/run.py`` entry: 100k and 1M pairs (quick: 20k and 100k)."""
    sizes = [20_000, 100_000] if quick else [100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as tmp:
        return measure(Path(tmp), sizes, [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, required=True, help="folder for the stores (kept and reused) and scores")
    parser.add_argument("scan_args", nargs="*", help="more `poisonlab scan` arguments (after --)")
    ns = parser.parse_args(argv)
    print(format_table(measure(ns.out, ns.samples, ns.scan_args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
