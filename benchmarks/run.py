"""Benchmark runner: discovers ``benchmarks/bench_*.py`` and prints one table of measured rows.

Each module defines ``run(quick: bool) -> list[Row]``. A row compares a poisonlab path with a baseline
measured in the same run, so the ratio is meaningful on any machine; ``floor`` is the target ratio.

    .venv/bin/python benchmarks/run.py            # everything
    .venv/bin/python benchmarks/run.py --quick    # smaller inputs (a smoke test)
    .venv/bin/python benchmarks/run.py -k shards  # only modules whose name contains "shards"
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import sys
import traceback
from pathlib import Path


@dataclasses.dataclass
class Row:
    """One measurement. ``ratio`` = value / baseline when higher is better, baseline / value otherwise."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = True
    floor: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.value == 0 or self.baseline == 0:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def verdict(self) -> str:
        if self.floor is None or self.ratio is None:
            return ""
        return "ok" if self.ratio >= self.floor else "BELOW"


def _modules(pattern: str | None) -> list[Path]:
    here = Path(__file__).parent
    return [p for p in sorted(here.glob("bench_*.py")) if pattern is None or pattern in p.stem]


def _load(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def format_table(rows: list[Row]) -> str:
    head = ("benchmark", "value", "baseline", "ratio", "floor", "", "note")
    lines = []
    for r in rows:
        base = f"{r.baseline:,.3g} {r.unit} ({r.baseline_name})" if r.baseline is not None else ""
        lines.append((r.name, f"{r.value:,.3g} {r.unit}", base, f"{r.ratio:.2f}x" if r.ratio else "",
                      f"{r.floor:.2f}x" if r.floor else "", r.verdict, r.note))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), "-+-".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-k", dest="pattern", default=None)
    parser.add_argument("--json", dest="json_out", default=None, help="also write rows to this JSON file")
    parser.add_argument("--samples", type=int, default=None,
                        help="input size, for the benchmarks whose run() takes one (bench_scale)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    rows: list[Row] = []
    failed = 0
    for path in _modules(args.pattern):
        try:
            run = _load(path).run
            sized = args.samples is not None and "samples" in inspect.signature(run).parameters
            rows += run(args.quick, samples=args.samples) if sized else run(args.quick)
        except Exception:
            failed += 1
            traceback.print_exc()
            rows.append(Row(name=f"{path.stem}: FAILED", value=0.0, unit=""))
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows], indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
