"""Layers: a lower layer never imports a higher one, and only ``flows`` imports the orchestration libraries.

Every module's imports (also those inside functions and under ``TYPE_CHECKING``) are read with ``ast``,
so the check costs no import and catches a late import as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "poisonlab"

# Lowest first. models < attacks < filters share layer 3 (filters may import models and attacks);
# graph and federated are the adapters (layer 5), both above training and below flows.
RANKS: dict[str, float] = {
    "pipelines": 1, "shards": 2, "models": 3.0, "attacks": 3.1, "filters": 3.2, "training": 4,
    "graph": 5, "federated": 5, "flows": 6,
}
ORCHESTRATION = frozenset({"prefect", "dask", "distributed", "prefect_dask", "typer"})
ORCHESTRATION_HOME = "flows"
# The core carries any payload on a machine without torch (graph and federated adapters bring their own).
NOT_IN_CORE = {"pipelines": frozenset({"torch"})}


def _imported(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``tree``; relative ones resolved against ``module``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PACKAGE and parts[1] in RANKS else None


def layering_violations(root: Path, ranks: dict[str, float] = RANKS) -> list[str]:
    """Every import in the layer folders under ``root`` that goes up a layer or pulls in an orchestrator."""
    problems = []
    for layer in ranks:
        for path in sorted((root / layer).rglob("*.py")) if (root / layer).is_dir() else []:
            rel = path.relative_to(root)
            module = ".".join([PACKAGE, *rel.with_suffix("").parts])
            for line, name in _imported(ast.parse(path.read_text(), str(path)), module):
                target = _layer(name)
                if target is not None and ranks[target] > ranks[layer]:
                    problems.append(f"{rel}:{line}: {layer} imports {name} (layer {target} is higher)")
                top = name.split(".")[0]
                if top in ORCHESTRATION and layer != ORCHESTRATION_HOME:
                    problems.append(f"{rel}:{line}: {name} is imported outside {ORCHESTRATION_HOME}/")
                if top in NOT_IN_CORE.get(layer, ()):
                    problems.append(f"{rel}:{line}: {layer} imports {name}")
    return problems


def test_no_module_imports_a_higher_layer_or_an_orchestrator_outside_flows() -> None:
    assert layering_violations(REPO) == []


def test_the_checker_finds_a_bad_import(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "bad.py").write_text(
        "from poisonlab.pipelines import Sample\n"  # fine: a lower layer
        "def late():\n    from poisonlab.training import trainer\n"  # a higher layer, inside a function
    )
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "core.py").write_text("import torch.nn\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "zoo.py").write_text("from ..attacks import base\nimport dask.array\n")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "ok.py").write_text("import prefect\nfrom poisonlab.training import trainer\n")
    problems = layering_violations(tmp_path)
    assert problems == [
        "pipelines/core.py:1: pipelines imports torch.nn",
        "shards/bad.py:3: shards imports poisonlab.training (layer training is higher)",
        "models/zoo.py:1: models imports poisonlab.attacks (layer attacks is higher)",
        "models/zoo.py:2: dask.array is imported outside flows/",
    ]
