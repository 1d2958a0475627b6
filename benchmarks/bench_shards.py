"""Shard I/O against plain baselines measured in the same run, on 256 px generated images.

* passthrough: ``read_shard`` -> ``ShardWriter`` through the executor (every check, the sidecar and the
  accounting included) vs a raw ``tarfile`` member-by-member copy of the same tars;
* re-encode: the reader and a stage that decodes and re-encodes every image (through the executor's
  stage machinery) vs a plain PIL decode + encode loop over the same image bytes already in memory,
  with the same JPEG settings; and the whole shard task with the writer too, for reference;
* memory: peak RSS of a child process running the passthrough over 10x the input vs 1x (streaming
  must keep it flat). Inputs grow by shards, the way datasets grow, and in a second row by shard size.

    .venv/bin/python benchmarks/run.py -k shards
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from baselines import QUALITY, generate, jpeg_images, pil_loop, raw_tar_copy
from run import Row

from poisonlab.pipelines.executor import run_local
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import MapStage, ShardContext, chain_stages
from poisonlab.shards.images import decode_image, encode_image
from poisonlab.shards.layout import list_shards, sidecar_path, tar_path
from poisonlab.shards.plan import finalize_folder, plan_folder_tasks
from poisonlab.shards.reader import read_shard


class Reencode(MapStage):
    """Decode and re-encode every image, as an attack or a resize stage does."""

    name = "reencode"

    def map(self, sample: Sample, ctx: ShardContext) -> Sample:
        image = decode_image(sample.payload)
        return sample.changed(self.name, payload=encode_image(image, "jpg", QUALITY))


def _best(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:  # type: ignore[type-arg]
    """Best (least disturbed) CPU and wall seconds of each function, run in turns.

    Rows compare CPU time: on a machine shared with other jobs, wall time mostly measures the others.
    The wall-clock ratio goes into the note. Pyarrow's threads count: process time covers them.
    """
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    return {k: (min(cpu[k]), min(wall[k])) for k in fns}


def _passthrough(src: Path, dst: Path, stages=()) -> None:  # type: ignore[no-untyped-def]
    finalize_folder(dst, run_local(plan_folder_tasks(src, dst, list(stages))))


def _fresh(root: Path, prefix: str) -> Path:
    """A new output folder per run (so no run is skipped as complete, and no deletion is timed)."""
    return root / f"{prefix}-{time.perf_counter_ns()}"


def _read_reencode(src: Path) -> None:
    """Reader -> re-encode stage through the executor's stage machinery, without writing."""
    ctx = ShardContext(shard="bench")
    for shard in list_shards(src):
        stream, _ = chain_stages([Reencode()], read_shard(src, shard), ctx)
        for _ in stream:
            pass


def _replicate(src: Path, dst: Path, copies: int) -> Path:
    """``copies`` x the shards of ``src`` under new names (same bytes: the passthrough does not care)."""
    dst.mkdir(parents=True, exist_ok=True)
    shards = list_shards(src)
    for c in range(copies):
        for i, shard in enumerate(shards):
            name = f"{c * len(shards) + i:05d}"
            shutil.copyfile(tar_path(src, shard), tar_path(dst, name))
            shutil.copyfile(sidecar_path(src, shard), sidecar_path(dst, name))
    return dst


# VmHWM is the peak RSS of this process's own address space; getrusage's ru_maxrss can carry over the
# parent's size from before the exec, which would hide the child's own growth.
_CHILD = """
import sys, json
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from bench_shards import _passthrough
_passthrough(Path(sys.argv[1]), Path(sys.argv[2]))
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"maxrss_kb": int(hwm.split()[1])}))
"""


def _peak_rss_mb(src: Path, dst: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(dst), str(Path(__file__).parent)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["maxrss_kb"] / 1024


def _row(name: str, n: int, t: dict, ours: str, base: str, base_name: str, floor: float | None, note: str) -> Row:  # type: ignore[type-arg]
    wall_ratio = t[base][1] / t[ours][1]
    return Row(name, n / t[ours][0], "samples/s (CPU)", n / t[base][0], base_name, floor=floor,
               note=f"{note}; wall-clock ratio {wall_ratio:.2f}x")


def run(quick: bool) -> list[Row]:
    samples, per_shard, repeats = (400, 200, 2) if quick else (2000, 1000, 5)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        root = Path(tmp)
        src = generate(root / "src", samples, per_shard, seed=7)
        n = samples
        images = jpeg_images(src)
        t = _best({
            "raw": lambda: raw_tar_copy(src, _fresh(root, "raw")),
            "pass": lambda: _passthrough(src, _fresh(root, "pass")),
            "pil": lambda: pil_loop(images),
            "reencode": lambda: _read_reencode(src),
            "reencode_write": lambda: _passthrough(src, _fresh(root, "reenc"), [Reencode()]),
        }, repeats)
        rows.append(_row("shards: read->write passthrough (256px)", n, t, "pass", "raw", "raw tarfile copy", 0.5,
                         "checks, sidecar, stats, fsync and accounting included"))
        rows.append(_row("shards: read+decode+re-encode (256px)", n, t, "reencode", "pil",
                         "PIL decode+encode loop in memory", 0.9, f"JPEG q{QUALITY} 4:4:4 both; reader + stage"))
        rows.append(_row("shards: read+decode+re-encode+write (256px)", n, t, "reencode_write", "pil",
                         "PIL decode+encode loop in memory", None, "the whole shard task, for reference"))

        copies = 10
        big = _replicate(src, root / "x10", copies)
        rss1 = _peak_rss_mb(src, root / "m1")
        rss10 = _peak_rss_mb(big, root / "m10")
        rows.append(Row(f"shards: peak RSS, passthrough of {copies}x the shards", rss10, "MB", rss1,
                        f"1x ({len(list_shards(src))} shards)", higher_is_better=False, floor=1 / 1.1,
                        note="child process per size; ratio = RSS(1x)/RSS(10x)"))
        fat = _replicate_fat(src, root / "fat", copies)
        rss_fat = _peak_rss_mb(fat, root / "mfat")
        rows.append(Row(f"shards: peak RSS, one shard {copies}x larger", rss_fat, "MB", rss1,
                        f"1x ({per_shard} per shard)", higher_is_better=False, floor=1 / 1.1,
                        note="duplicate-key sets and packed sidecar rows grow with the shard"))
    return rows


def _replicate_fat(src: Path, dst: Path, copies: int) -> Path:
    """One shard holding ``copies`` x the samples of ``src`` (keys made unique per copy)."""
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path(dst, "00000"), "w") as tout:
        for c in range(copies):
            for shard in list_shards(src):
                with tarfile.open(tar_path(src, shard), "r|") as tin:
                    for info in tin:
                        data = tin.extractfile(info).read()
                        info.name = f"c{c}_{info.name}"
                        tout.addfile(info, io.BytesIO(data))
    return dst
