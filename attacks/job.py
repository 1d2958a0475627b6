"""A poisoning run from recipe to manifest, without choosing how shard tasks are executed.

``prepare_poisoning`` validates everything and plans before any work: attacks and parameters, targets,
rates and counts, caption pools, pattern and donor images. It then writes the run's ``attack.json``
(with its assets) into the output folder and returns a ``PoisonJob`` whose ``tasks()`` any runner can
execute (in-process, Prefect on Dask) in any order; ``finalize`` writes ``sizes.json`` and the manifest
and checks that the manifest and the plan agree.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from poisonlab.attacks import captions as C
from poisonlab.attacks.assets import AssetRef
from poisonlab.attacks.base import Candidate
from poisonlab.attacks.donors import fetch_donors
from poisonlab.attacks.image_triggers import PatternContext
from poisonlab.attacks.index import DatasetIndex, index_dataset
from poisonlab.attacks.manifest import build_manifest, write_manifest
from poisonlab.attacks.outcomes import AttackOutcome, plan_outcomes, write_run_summary
from poisonlab.attacks.planner import ShardPlan, added_keys, planned_count, select, shard_plans
from poisonlab.attacks.recipe import ConfiguredAttack, Recipe, RecipeError, configure
from poisonlab.attacks.spec import SPEC_FILE, AttackRecord, RunSpec, record_for, write_run_spec
from poisonlab.attacks.stage import PoisonStage
from poisonlab.pipelines.accounting import ShardResult, stats_of
from poisonlab.pipelines.executor import ShardTask
from poisonlab.shards.dataset import copy_dataset_record, read_dataset_record, read_policy_for
from poisonlab.shards.fingerprint import dataset_fingerprint, with_fingerprints
from poisonlab.shards.markers import check_resume
from poisonlab.shards.plan import finalize_folder, plan_folder_tasks


class PlanMismatch(RuntimeError):
    """The written shards do not match the plan (a bug, never a user error)."""


def _target_checker(target: str | None) -> Callable[[str | None], bool]:
    if target is None:
        return lambda caption: False
    pattern = C.mention_pattern(target)
    return lambda caption: C.mentions(caption, pattern)


def _check_target(configured: ConfiguredAttack, index: DatasetIndex) -> str | None:
    target = configured.entry.target
    if target is None and not configured.attack.needs_target():
        return None
    target = C.check_target(target)
    if index.classnames is not None and target not in index.classnames:
        raise C.TargetError(
            f"attack {configured.id!r}: target {target!r} is not a class of this dataset "
            f"(classes.json lists: {', '.join(index.classnames)})"
        )
    return target


def _check_modalities(configured: Sequence[ConfiguredAttack], src: Path) -> None:
    """Attacks declare the modalities they work on; a dataset of another (``dataset.json``) is refused
    before any work, whatever the attack's name."""
    modality = read_dataset_record(src).modality
    for conf in configured:
        allowed = conf.attack.modalities
        if modality not in allowed:
            raise RecipeError(f"attack {conf.id!r} ({conf.entry.attack}) works on {' or '.join(sorted(allowed))} "
                              f"datasets, but this dataset holds {modality} samples (its dataset.json)")


def _caption_pool(configured: ConfiguredAttack, target: str | None, index: DatasetIndex, seed: int) -> tuple[str, ...]:
    source = configured.attack.caption_source()
    if source is None:
        return ()
    kind, templates, size = source
    if kind == "templates":
        return C.template_pool(target or "", templates)
    return C.dataset_pool(target or "", (c.caption for c in index.candidates), seed, f"{configured.id}/pool", size)


@dataclasses.dataclass
class PoisonJob:
    """A validated, planned run whose spec is already saved in ``dst``."""

    src: Path
    dst: Path
    spec: RunSpec
    plans: dict[str, ShardPlan]
    overwrite: bool = False  # redo shards another configuration wrote (else they are refused)

    @property
    def spec_path(self) -> Path:
        return self.dst / SPEC_FILE

    def tasks(self) -> list[ShardTask]:
        """One task per shard; each carries only its own part of the plan.

        Shards in ``dst`` that another configuration finished are refused here, in the driver, before any
        work (or removed to be redone with ``overwrite``): their markers would not match.
        """
        out = []
        policy = read_policy_for(self.src)  # the folder's modality: a non-image payload is not refused
        for shard, plan in self.plans.items():
            stage = PoisonStage(str(self.spec_path.resolve()), self.spec.run_id, plan)
            out.extend(plan_folder_tasks(self.src, self.dst, [stage], policy, shards=[shard]))
        check_resume(out, self.overwrite)
        return out

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        """Write ``sizes.json``, ``dataset.json`` and ``_run/manifest.parquet``; account for every planned sample.

        A planned sample the run could not poison (the reader refused it, the trigger could not decode it)
        is counted as failed with its reason, never raised after the shards are written.
        """
        stats = stats_of(results)
        finalize_folder(self.dst, stats)
        copy_dataset_record(self.src, self.dst)
        fingerprint = dataset_fingerprint(self.dst)  # the output the manifest describes, sidecars final
        table = build_manifest(self.dst, self.spec.run_id)
        manifest = write_manifest(self.dst, with_fingerprints(table, [fingerprint]))
        outcomes = plan_outcomes(self.dst, self.plans, self.spec.run_id)
        done = Counter(table.column("attack_id").to_pylist())
        for record in self.spec.attacks:
            outcome = outcomes.get(record.id, AttackOutcome())
            if outcome.planned != record.planned or outcome.done != done.get(record.id, 0):
                raise PlanMismatch(f"attack {record.id!r}: planned {record.planned}, the plan holds "
                                   f"{outcome.planned}, {outcome.done} done but the manifest has {done.get(record.id, 0)}")
        reasons: Counter = Counter()
        for outcome in outcomes.values():
            reasons.update(outcome.reasons)
        result = {
            "out": str(self.dst), "run_id": self.spec.run_id, "manifest": str(manifest), "fingerprint": fingerprint,
            "samples": self.spec.dataset.get("samples"), "shards": len(stats),
            "poisoned": sum(done.values()), "failed": sum(o.failed for o in outcomes.values()),
            "failed_reasons": dict(sorted(reasons.items())),
            "attacks": {r.id: {"attack": r.attack, "target": r.target, "planned": r.planned, "done": done.get(r.id, 0),
                               "failed": outcomes.get(r.id, AttackOutcome()).failed,
                               "failed_reasons": dict(sorted(outcomes.get(r.id, AttackOutcome()).reasons.items()))}
                        for r in self.spec.attacks},
        }
        write_run_summary(self.dst, result)
        return result


def select_in_groups(index: DatasetIndex, conf: ConfiguredAttack, names_target: Callable[[str | None], bool],
                     seed: int, taken: set[tuple[str, str]], groups: Mapping[str, frozenset[str]] | None) -> list[Candidate]:
    """The attack's samples: over the whole dataset, or, with ``groups`` (name -> keys), an exact count or
    rate within each group separately (a federated malicious client poisons only its own partition)."""
    if groups is None:
        n = planned_count(conf.entry, index.total, conf.id)
        return select(index.candidates, conf.attack, names_target, n, seed, conf.id, taken)
    chosen: list[Candidate] = []
    for name, keys in sorted(groups.items()):
        members = [c for c in index.candidates if c.key in keys]
        n = planned_count(conf.entry, len(keys), f"{conf.id}' in group '{name}")
        chosen += select(members, conf.attack, names_target, n, seed, conf.id, taken)
    return chosen


def prepare_poisoning(src: Path, dst: Path, recipe: Recipe, base_dir: Path | None = None,
                      overwrite: bool = False, groups: Mapping[str, frozenset[str]] | None = None) -> PoisonJob:
    """Validate and plan ``recipe`` over ``src``, save the spec into ``dst``; no shard is written yet.

    ``base_dir`` resolves relative image paths in parameters (the recipe's folder, else the cwd). ``groups``
    (name -> keys, e.g. malicious clients' partitions) restricts every attack to those keys, with its count
    or rate applied within each group; the spec records the groups' sizes (so the run id differs).
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("input and output folders must differ: shards are never rewritten in place")
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    configured = configure(recipe)
    _check_modalities(configured, src)
    index = index_dataset(src)
    records: list[AttackRecord] = []
    assets: dict[AssetRef, bytes] = {}
    taken: set[tuple[str, str]] = set()
    modified: dict[str, list[Candidate]] = {}
    added: dict[str, list[tuple[str, str, int]]] = {}
    for conf in configured:
        attack, seed = conf.attack, recipe.seed
        target = _check_target(conf, index)
        names_target = _target_checker(target)
        if attack.adds_samples:
            if groups is not None:
                raise RecipeError(f"attack {conf.id!r} adds samples, which belong to no group (client); "
                                  "within groups only attacks that modify samples can be planned")
            n = planned_count(conf.entry, index.total, conf.id)
            added[conf.id] = added_keys(conf.id, n, index.shards, seed, index.keys)
        else:
            modified[conf.id] = select_in_groups(index, conf, names_target, seed, taken, groups)
            n = len(modified[conf.id])
            taken.update((c.shard, c.key) for c in modified[conf.id])
        captions = _caption_pool(conf, target, index, seed)
        pattern = None
        made = attack.pattern_asset(PatternContext(base_dir, src, target, seed, conf.id))
        if made is not None:
            pattern, data = made
            assets[pattern] = data
        donors: tuple = ()
        request = attack.donor_request()
        if request is not None and n > 0:
            donors, donor_assets = fetch_donors(src, index, request, seed, conf.id, names_target, base_dir)
            assets.update(donor_assets)
        records.append(record_for(conf, n, captions, pattern, donors))
    dataset = {"samples": index.total, "shards": len(index.shards), "fingerprint": index.fingerprint}
    if groups is not None:
        dataset["groups"] = {name: len(keys) for name, keys in sorted(groups.items())}
    spec = RunSpec(seed=recipe.seed, attacks=tuple(records), dataset=dataset)
    write_run_spec(dst, spec, assets, overwrite=overwrite)
    job = PoisonJob(src, dst, spec, shard_plans(index.shards, modified, added), overwrite)
    job.tasks()  # refuses (or, with overwrite, clears) another configuration's shards before any work
    return job
