"""``poisonlab experiment RECIPE.yaml``: poison -> train -> detect -> clean -> retrain -> evaluate -> report.

Each step is a Prefect task (run in order inside one flow) whose outputs are folders on disk and whose
result is a JSON marker ``steps/<step>.json`` written last; a rerun skips every step with a marker, and a
step interrupted half-way resumes its own work (shard folders skip finished shards, training resumes from
its last epoch checkpoint). With ``--executor local``, or ``auto`` without a cluster asked for, the steps
run in this process without Prefect.

    out/data, out/data/eval     generated (or given) clean shards and the labelled evaluation split
    out/poisoned                poisoned shards + attack.json + _run/manifest.parquet
    out/runs/{victim,baseline,cleaned}   training runs (checkpoint, metrics, loss plot)
    out/embeddings, out/scores  victim embeddings and detector scores
    out/cleaned                 poisoned shards minus the pairs removed at the budget
    out/eval/*.json, out/report report.md / report.html / plots
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from poisonlab.flows.runtime import Executor, RunnerSpec, choose_executor
from poisonlab.pipelines.registry import Params, RegistryError
from poisonlab.shards.layout import atomic_write_json
from poisonlab.training import TrainSettings

STEPS_DIR = "steps"
SPEC_NAME = "experiment.json"


class ExperimentError(ValueError):
    """A recipe or experiment folder that cannot be run: reported before any step starts."""


# --- the recipe ------------------------------------------------------------------------------------


class SynthData(Params):
    modality: str = Field("image", description="which built-in dataset: image (shapes and captions) or graph "
                                               "(motif graphs and descriptions); `poisonlab synth --modality`")
    samples: int = Field(20000, ge=100)
    image_size: int = Field(32, ge=8, le=1024)
    samples_per_shard: int = Field(1000, ge=10)
    eval_per_class: int = Field(50, ge=2)

    @field_validator("modality")
    @classmethod
    def _generated(cls, modality: str) -> str:
        from poisonlab.flows.datasets import GENERATORS

        if modality not in GENERATORS:
            raise ValueError(f"no built-in {modality!r} dataset; there are: {', '.join(GENERATORS)}")
        return modality


class DataSpec(Params):
    """Generate the built-in dataset, or use shard folders (relative paths: from the recipe's folder)."""

    synth: SynthData | None = None
    shards: str | None = None
    eval: str | None = Field(None, description="labelled evaluation split with classes.json")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.synth is None) == (self.shards is None):
            raise ValueError("data: give exactly one of 'synth' or 'shards'")
        if self.shards is not None and self.eval is None:
            raise ValueError("data: 'shards' needs 'eval' (a labelled split with classes.json)")
        return self


class DetectorEntry(Params):
    name: str
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.id or self.name


class DetectSpec(Params):
    """Detectors scored on the victim's own image/text embeddings of the poisoned shards."""

    detectors: tuple[DetectorEntry, ...] = Field(..., min_length=1)
    embed_batch_size: int = Field(512, ge=1)


ORACLE_DETECTOR = "best"  # chosen against the ground truth: an upper bound for reports, never a user's choice
# An attack parameter with this value names the experiment's own clean baseline run (e.g. the surrogate of
# optimised_patch): the baseline is then trained before the data is poisoned, on the same clean shards.
OWN_BASELINE = "@baseline"


def mentions(value: Any, token: str) -> bool:
    """Whether ``token`` is a value anywhere in nested mappings and lists."""
    if isinstance(value, Mapping):
        return any(mentions(v, token) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(mentions(v, token) for v in value)
    return value == token


def replaced(value: Any, token: str, by: str) -> Any:
    """``value`` with every occurrence of the value ``token`` in nested mappings and lists replaced by ``by``."""
    if isinstance(value, Mapping):
        return {k: replaced(v, token, by) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [replaced(v, token, by) for v in value]
    return by if value == token else value


class CleanSpec(Params):
    """How the experiment cleans: by a detector the recipe names (its first one by default), chosen without
    the manifest, as a user without ground truth must. ``best`` (the highest AUROC against the manifest) is
    an oracle: reports label it as one."""

    budget: float = Field(0.02, gt=0, lt=1, description="share of the dataset removed")
    detector: str | None = Field(None, description="a detector label of `detect` (default: the first listed), or "
                                 "'best': the oracle, highest AUROC against the ground-truth manifest")


class ExperimentSpec(Params):
    name: str
    seed: int = 0
    data: DataSpec
    attacks: tuple[dict[str, Any], ...] = Field(..., min_length=1, description="entries of an attack recipe")
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]
    detect: DetectSpec | None = None
    clean: CleanSpec | None = None
    baseline: bool = Field(True, description="also train on the unpoisoned data (the attack success of a clean model)")

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError("name must be letters, digits, '.', '_' or '-'")
        return name

    @model_validator(mode="after")
    def _clean_needs_detect(self) -> ExperimentSpec:
        if self.clean is not None and self.detect is None:
            raise ValueError("'clean' needs 'detect' (the scores to clean by)")
        if self.clean is not None and self.clean.detector not in (None, ORACLE_DETECTOR):
            labels = [d.label for d in self.detect.detectors]  # type: ignore[union-attr]
            if self.clean.detector not in labels:
                raise ValueError(f"clean.detector {self.clean.detector!r} is not one of the detectors {labels}")
        return self

    @model_validator(mode="after")
    def _own_baseline_is_trained(self) -> ExperimentSpec:
        if self.poisons_with_baseline and not self.baseline:
            raise ValueError(f"an attack names {OWN_BASELINE!r} (this experiment's clean baseline), so 'baseline' "
                             "must be true")
        return self

    @property
    def poisons_with_baseline(self) -> bool:
        """An attack needs the clean baseline (a surrogate model) before the data can be poisoned."""
        return mentions(self.attacks, OWN_BASELINE)

    def attack_recipe(self, baseline_run: Path | None = None):  # type: ignore[no-untyped-def]
        """The attacks as a recipe; with ``baseline_run``, every ``@baseline`` parameter names that run folder."""
        from poisonlab.attacks.recipe import parse_recipe

        attacks = list(self.attacks) if baseline_run is None else replaced(self.attacks, OWN_BASELINE, str(baseline_run))
        return parse_recipe({"seed": self.seed, "attacks": attacks}, where=f"experiment {self.name} attacks")

    def run(self, out: Path, runner: RunnerSpec, base_dir: Path | None = None) -> dict[str, Any]:
        return run_experiment(self, out, runner, base_dir)


def _recipe_model(raw: dict[str, Any]) -> type[Params]:
    """A recipe with a ``grid:`` section is a grid of experiments (``flows/grid.py``), any other one experiment."""
    if "grid" not in raw:
        return ExperimentSpec
    from poisonlab.flows.grid import GridSpec

    return GridSpec


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> tuple[ExperimentSpec, Path]:
    """Read and fully validate a recipe (attacks and detectors included); returns it with its folder: an
    ``ExperimentSpec``, or a ``GridSpec`` for a recipe with a ``grid:``; either runs with ``spec.run``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"cannot read experiment recipe {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"experiment recipe {path} must be a mapping")
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        spec = _recipe_model(raw).model_validate(raw)
        from poisonlab.attacks.recipe import configure

        configure(spec.attack_recipe())  # unknown attacks or parameters fail here, before any step
        _check_detectors(spec)
    except (ValidationError, RegistryError, ValueError) as exc:
        raise ExperimentError(f"invalid experiment recipe {path}: {exc}") from None
    return spec, path.parent.resolve()


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """``--set a.b.0.c=V``: dict keys (created when missing) and list indices (which must exist)."""
    node: Any = raw
    *parents, last = dotted.split(".")
    try:
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise TypeError(f"{type(node).__name__} has no fields")
    except (ValueError, IndexError, TypeError, AttributeError) as exc:
        raise ExperimentError(f"--set {dotted}: no such place in the recipe ({exc})") from None


def _check_detectors(spec: ExperimentSpec) -> None:
    if spec.detect is None:
        return
    from poisonlab.pipelines.registry import get_registry, load_plugins

    load_plugins()
    registry = get_registry("detector")
    for entry in spec.detect.detectors:
        registry.get(entry.name).parse(entry.params)


# --- steps -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Experiment], dict[str, Any]]


@dataclasses.dataclass
class Experiment:
    """An experiment folder: where each step reads and writes, and which steps are done."""

    spec: ExperimentSpec
    out: Path
    runner: RunnerSpec
    base_dir: Path

    # where things live
    @property
    def data_dir(self) -> Path:
        return Path(self._resolve(self.spec.data.shards)) if self.spec.data.shards else self.out / "data"

    @property
    def eval_dir(self) -> Path:
        return Path(self._resolve(self.spec.data.eval)) if self.spec.data.eval else self.out / "data" / "eval"

    poisoned_dir = property(lambda self: self.out / "poisoned")
    cleaned_dir = property(lambda self: self.out / "cleaned")
    embeddings_dir = property(lambda self: self.out / "embeddings")
    scores_dir = property(lambda self: self.out / "scores")
    report_dir = property(lambda self: self.out / "report")

    def run_dir(self, label: str) -> Path:
        return self.out / "runs" / label

    def _resolve(self, path: str | None) -> str:
        p = Path(path or "")
        return str(p if p.is_absolute() else (self.base_dir / p).resolve())

    # step bookkeeping
    def steps(self) -> list[Step]:
        from poisonlab.flows import experiment_steps as S
        from poisonlab.flows import train as T

        baseline = [Step("train_baseline", T.train_baseline)] if self.spec.baseline else []
        first, later = (baseline, []) if self.spec.poisons_with_baseline else ([], baseline)
        steps = [Step("data", S.prepare_data), *first, Step("poison", S.poison), Step("train_victim", T.train_victim),
                 *later]
        if self.spec.detect is not None:
            steps += [Step("embed", S.embed), Step("detect", S.detect)]
        if self.spec.clean is not None:
            steps += [Step("clean", S.clean), Step("train_cleaned", T.train_cleaned)]
        steps += [Step("evaluate", T.evaluate), Step("report", S.report)]
        return steps

    def marker(self, name: str) -> Path:
        return self.out / STEPS_DIR / f"{name}.json"

    def result(self, name: str) -> dict[str, Any]:
        path = self.marker(name)
        if not path.exists():
            raise ExperimentError(f"step {name!r} has not run yet in {self.out}")
        return json.loads(path.read_text())

    def run_step(self, name: str) -> dict[str, Any]:
        """Run a step unless its marker exists; the marker (the step's result) is written last."""
        if self.marker(name).exists():
            return {**self.result(name), "resumed": True}
        step = next(s for s in self.steps() if s.name == name)
        result = step.run(self)
        self.marker(name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.marker(name), result)
        return result

    def claim_folder(self) -> None:
        """Record the recipe in the folder; a folder holding a different experiment is refused."""
        self.out.mkdir(parents=True, exist_ok=True)
        body = self.spec.model_dump(mode="json")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        path = self.out / SPEC_NAME
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("digest") != digest:
                raise ExperimentError(f"{self.out} holds another experiment (recipe {saved.get('digest')} vs {digest}); "
                                      "use a fresh --out, or delete the folder to start over")
            return
        atomic_write_json(path, {"digest": digest, "recipe": body, "base_dir": str(self.base_dir)})


def run_experiment(spec: ExperimentSpec, out: Path, runner: RunnerSpec, base_dir: Path | None = None) -> dict[str, Any]:
    """Run (or resume) every step; Prefect runs them as tasks of one flow with the prefect executor (or auto
    with a cluster asked for); each step's shard jobs choose their own executor from the runner."""
    exp = Experiment(spec, Path(out), runner, Path(base_dir or Path.cwd()))
    exp.claim_folder()
    names = [s.name for s in exp.steps()]
    if choose_executor(runner, shards=0) == Executor.prefect.value:
        from poisonlab.flows.experiment_flow import run_experiment_flow

        results = run_experiment_flow(exp, names)
    else:
        results = {name: exp.run_step(name) for name in names}
    return {"out": str(exp.out), "steps": results, "summary": results["report"]["summary"],
            "table": results["report"]["table"]}
