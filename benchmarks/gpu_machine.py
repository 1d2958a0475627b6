"""Prepare what ``bench_gpu.py`` needs on a lent GPU machine that has torch but not the rest of the stack.

The lent machines (``benchmarks/results/2026-12-06-gpu.md``) run Python 3.12 with torch on CUDA 13 and have
no network. What they lack travels with the working tree, at most 64 MiB a call:

* ``.whl/``: wheels of open_clip, webdataset, pydantic and poisonlab itself, from the registry and this
  checkout;
* ``.gpu/faiss-gpu-sm90.tar.xz``: the registry's ``faiss-gpu`` (CUDA 12), the only build with H100 (sm_90)
  kernels. It is 135 MB, so every other architecture's cubins are zeroed, which leaves it at about 20 MB
  packed. The loader only reads the sm_90 cubin on that GPU.
* ``.gpu/libcudart.so.12``, plus two shims built here: ``libcublas.so.12`` forwards the eight cuBLAS calls
  faiss makes to the machine's CUDA 13 ``libcublas.so.13``, and ``libcublasLt.so.12`` is empty (faiss names
  it and calls nothing in it). The CUDA 12 cuBLAS wheel is 581 MB.

    .venv/bin/python benchmarks/gpu_machine.py     # then run the printed command there, carrying .whl and .gpu

Nothing here is a dependency of poisonlab or of its tests.
"""

from __future__ import annotations

import collections
import io
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
WHEELS = ("open_clip_torch==3.3.0", "ftfy==6.3.1", "wcwidth==0.9.4", "webdataset==0.2.86", "braceexpand==0.1.7",
          "pydantic==2.14.4", "pydantic_core==2.50.5", "annotated_types==0.8.0", "typing_inspection==0.4.5")
FAISS, CUDART = "faiss-gpu==1.15.1", "nvidia-cuda-runtime-cu12==12.9.79"
FATBIN_MAGIC, ELF_KIND, KEEP_ARCH = 0xBA55ED50, 2, 90
CUBLAS_CALLS = {  # name: (C parameter list, argument names), as cuBLAS 12 and 13 both declare them
    "cublasCreate_v2": ("void **h", "h"),
    "cublasDestroy_v2": ("void *h", "h"),
    "cublasSetStream_v2": ("void *h, void *s", "h, s"),
    "cublasGetMathMode": ("void *h, int *m", "h, m"),
    "cublasSetMathMode": ("void *h, int m", "h, m"),
    "cublasGemmEx": ("void *h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int At, int lda, "
                     "const void *B, int Bt, int ldb, const void *be, void *C, int Ct, int ldc, int ct, int algo",
                     "h, ta, tb, m, n, k, al, A, At, lda, B, Bt, ldb, be, C, Ct, ldc, ct, algo"),
    "cublasGemmStridedBatchedEx": (
        "void *h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int At, int lda, long long sA, "
        "const void *B, int Bt, int ldb, long long sB, const void *be, void *C, int Ct, int ldc, long long sC, "
        "int count, int ct, int algo",
        "h, ta, tb, m, n, k, al, A, At, lda, sA, B, Bt, ldb, sB, be, C, Ct, ldc, sC, count, ct, algo"),
    "cublasSgemmEx": ("void *h, int ta, int tb, int m, int n, int k, const float *al, const void *A, int At, int lda, "
                      "const void *B, int Bt, int ldb, const float *be, void *C, int Ct, int ldc",
                      "h, ta, tb, m, n, k, al, A, At, lda, B, Bt, ldb, be, C, Ct, ldc"),
}
COMMAND = (
    "export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore; python3 -m pip install -q --no-index --no-deps "
    "--no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1; tar -xJf .gpu/faiss-gpu-sm90.tar.xz "
    "-C /tmp/site || exit 1; export PYTHONPATH=/tmp/site; CUB=$(dirname \"$(find /opt /usr -name 'libcublas.so.13' "
    "2>/dev/null | head -1)\"); export LD_LIBRARY_PATH=$PWD/.gpu:$CUB:$LD_LIBRARY_PATH; "
    "python3 benchmarks/run.py -k gpu --json $OUT/gpu.json 2>&1 | tee $OUT/gpu.log"
)


def _download(dest: Path, *specs: str) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *specs],
                   check=True)


def keep_one_arch(library: bytes, arch: int = KEEP_ARCH) -> tuple[bytes, collections.Counter]:
    """``library`` with every fatbin entry but ``arch``'s cubins zeroed (PTX too); counts what it kept."""
    data, kept, pos = bytearray(library), collections.Counter(), 0
    while (pos := data.find(struct.pack("<I", FATBIN_MAGIC), pos)) >= 0:
        header_size, fat_size = struct.unpack_from("<HQ", data, pos + 6)
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry < end:
            kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, entry)
            if entry_header == 0:
                break
            if kind == ELF_KIND and struct.unpack_from("<I", data, entry + 28)[0] == arch:
                kept[arch] += 1
            else:
                data[entry + entry_header:entry + entry_header + size] = bytes(size)
            entry += entry_header + size
        pos = max(end, pos + 4)
    return bytes(data), kept


def trimmed_faiss(wheel: Path, out: Path) -> collections.Counter:
    """The faiss-gpu wheel's files as a tar.xz, its ``libfaiss.so`` holding only sm_90 cubins."""
    kept: collections.Counter = collections.Counter()
    with zipfile.ZipFile(wheel) as zf, tarfile.open(out, "w:xz") as tar:
        for info in zf.infolist():
            payload = zf.read(info)
            if info.filename.endswith("libfaiss.so"):
                payload, kept = keep_one_arch(payload)
            member = tarfile.TarInfo(info.filename)
            member.size, member.mode = len(payload), 0o755
            tar.addfile(member, io.BytesIO(payload))
    return kept


def cublas_shims(dest: Path) -> None:
    """Build libcublas.so.12 (forwarding to libcublas.so.13) and an empty libcublasLt.so.12 with gcc."""
    body = ["#include <dlfcn.h>", "#include <stdio.h>", "#include <stdlib.h>", "static void *lib;",
            "static void *sym(const char *name) {",
            '  if (!lib) lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);',
            "  void *f = lib ? dlsym(lib, name) : NULL;",
            '  if (!f) { fprintf(stderr, "cublas shim: %s: %s\\n", name, dlerror()); abort(); }',
            "  return f;", "}"]
    for name, (params, args) in CUBLAS_CALLS.items():
        body.append(f"int {name}({params}) {{ return ((int (*)({params}))sym(\"{name}\"))({args}); }}")
    (dest / "cublas_shim.c").write_text("\n".join(body) + "\n")
    (dest / "cublas.map").write_text("libcublas.so.12 { global: " + "; ".join(CUBLAS_CALLS) + "; local: *; };\n")
    (dest / "lt.c").write_text("int poisonlab_cublaslt_shim;\n")
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", "libcublas.so.12", "cublas_shim.c",
                    "-Wl,-soname,libcublas.so.12", "-Wl,--version-script=cublas.map", "-ldl"], cwd=dest, check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", "libcublasLt.so.12", "lt.c", "-Wl,-soname,libcublasLt.so.12"],
                   cwd=dest, check=True)


def _ignored(*folders: str) -> None:
    """Keep the carried folders out of git (they travel through ``carry``)."""
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    exclude.write_text("\n".join(lines + [f"/{f}/" for f in folders if f"/{f}/" not in lines]) + "\n")


def main() -> int:
    wheels, gpu = ROOT / ".whl", ROOT / ".gpu"
    _ignored(wheels.name, gpu.name)
    for folder in (wheels, gpu):
        folder.mkdir(exist_ok=True)
    _download(wheels, *WHEELS)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(ROOT)], check=True)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="gpu-machine-") as tmp:  # 139 MB: never in the carried folders
        downloads = Path(tmp)
        _download(downloads, FAISS, CUDART)
        kept = trimmed_faiss(next(downloads.glob("faiss_gpu-*.whl")), gpu / "faiss-gpu-sm90.tar.xz")
        with zipfile.ZipFile(next(downloads.glob("nvidia_cuda_runtime*.whl"))) as zf:
            (gpu / "libcudart.so.12").write_bytes(zf.read("nvidia/cuda_runtime/lib/libcudart.so.12"))
    cublas_shims(gpu)
    print(f"faiss: kept {sum(kept.values())} sm_{KEEP_ARCH} cubins; carry .whl and .gpu, then run:\n{COMMAND}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
