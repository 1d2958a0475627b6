"""Trigger an evaluation split with the exact trigger of a run, to measure attack success rate.

The non-target images of the split are triggered (captions and labels kept); images of the target class
are dropped with a reason, since attack success counts how often a triggered non-target image is
classified as the target. The output folder holds the triggered shards, the run's ``attack.json`` (with
its assets), the split's ``classes.json`` and a manifest, so an evaluator needs nothing else:

    from poisonlab.attacks import apply_trigger_to_eval
    apply_trigger_to_eval("data/eval", "poisoned/", "poisoned-eval/")   # or a recipe YAML
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poisonlab.attacks import captions as C
from poisonlab.attacks.assets import read_asset
from poisonlab.attacks.base import PAYLOAD_TRIGGER, TEXT_TRIGGER, image_meta, provenance
from poisonlab.attacks.manifest import build_manifest, write_manifest
from poisonlab.attacks.spec import (
    SPEC_FILE,
    SpecError,
    load_bindings,
    pick_record,
    read_run_spec,
    spec_from_recipe,
    write_run_spec,
)
from poisonlab.pipelines.accounting import ShardResult, shard_totals, stats_of
from poisonlab.pipelines.executor import ShardTask
from poisonlab.pipelines.job import run_job_local
from poisonlab.pipelines.sample import Sample
from poisonlab.pipelines.stage import MapStage, ShardContext
from poisonlab.shards.dataset import copy_dataset_record
from poisonlab.shards.images import decode_array, encode_image
from poisonlab.shards.markers import check_resume
from poisonlab.shards.plan import finalize_folder, plan_folder_tasks

CLASSES_FILE = "classes.json"


@dataclasses.dataclass(frozen=True)
class EvalLabels:
    """How to tell an evaluation sample's class: ``meta["class"]``, a label index, or its caption."""

    classnames: tuple[str, ...] | None = None
    label_key: str = "label"

    @classmethod
    def from_folder(cls, directory: Path) -> EvalLabels:
        path = Path(directory) / CLASSES_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(tuple(data.get("classnames") or ()) or None, str(data.get("label_key") or "label"))

    def classname(self, sample: Sample) -> str | None:
        if isinstance(sample.meta.get("class"), str):
            return sample.meta["class"]
        label = sample.meta.get(self.label_key)
        if self.classnames is not None and isinstance(label, int) and 0 <= label < len(self.classnames):
            return self.classnames[label]
        return None


class EvalTriggerStage(MapStage):
    """Trigger non-target samples; drop target-class ones (they do not count towards attack success)."""

    name = "eval_trigger"

    def __init__(self, spec_path: str, run_id: str, attack_id: str, labels: EvalLabels) -> None:
        self.spec_path = spec_path
        self.run_id = run_id
        self.attack_id = attack_id
        self.labels = labels

    def setup(self) -> None:
        self._attack, self._binding = load_bindings(self.spec_path, self.run_id)[self.attack_id]
        target = self._binding.target
        self._mention = C.mention_pattern(target) if target else None

    def _is_target(self, sample: Sample) -> bool:
        target = self._binding.target
        name = self.labels.classname(sample)
        if name is not None:
            return name == target
        return self._mention is not None and C.mentions(sample.text, self._mention)

    def map(self, sample: Sample, ctx: ShardContext) -> Sample:
        if not hasattr(self, "_binding"):
            self.setup()
        binding = self._binding
        if self._is_target(sample):
            return sample.dropped(self.name, f"target_class: {binding.target!r} is the attack's target")
        if PAYLOAD_TRIGGER in self._attack.capabilities:  # a graph trigger: the attack applies it, caption kept
            try:
                return self._attack.trigger_sample(sample, binding, self.name, "eval_trigger", sample.text)
            except ValueError as exc:
                return sample.errored(self.name, str(exc))
        if binding.trigger is None:  # a text trigger: the caption carries it
            caption = self._attack.apply_text(sample.text or "", sample.key, binding)
            record = provenance(binding, self._attack.name, "eval_trigger", sample.text, caption, None,
                                {"where": "caption"})
            return sample.changed(self.name, text=caption, meta={**sample.meta, "poisonlab": record})
        if sample.payload is None:
            return sample.errored(self.name, "missing_payload: nothing to trigger")
        image = decode_array(sample.payload)
        triggered, placement = binding.trigger.apply(image, sample.key)
        payload = encode_image(triggered, sample.payload_ext, binding.trigger.params.quality)
        record = provenance(binding, self._attack.name, "eval_trigger", sample.text, sample.text,
                            hashlib.sha256(sample.payload).hexdigest(), placement)
        return sample.changed(self.name, payload=payload, meta=image_meta(sample.meta, triggered, record))


@dataclasses.dataclass
class EvalTriggerJob:
    eval_dir: Path
    out_dir: Path
    run_id: str
    attack_id: str
    labels: EvalLabels

    def tasks(self) -> list[ShardTask]:
        stage = EvalTriggerStage(str((self.out_dir / SPEC_FILE).resolve()), self.run_id, self.attack_id, self.labels)
        tasks = plan_folder_tasks(self.eval_dir, self.out_dir, [stage])
        check_resume(tasks)  # shards another attack or split wrote are refused, not taken for this one's
        return tasks

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        stats = stats_of(results)
        finalize_folder(self.out_dir, stats)
        copy_dataset_record(self.eval_dir, self.out_dir)
        if (self.eval_dir / CLASSES_FILE).is_file():
            shutil.copyfile(self.eval_dir / CLASSES_FILE, self.out_dir / CLASSES_FILE)
        table = build_manifest(self.out_dir, self.run_id)
        write_manifest(self.out_dir, table)
        return {"out": str(self.out_dir), "run_id": self.run_id, "attack_id": self.attack_id,
                "triggered": table.num_rows, "by_status": shard_totals(stats)["by_status"]}


def prepare_eval_trigger(eval_dir: Path, spec: str | Path, out_dir: Path, attack: str | None = None,
                         seed: int | None = None) -> EvalTriggerJob:
    """Validate, copy the spec (and its assets) into ``out_dir``; ``spec`` is a run folder, its
    ``attack.json``, or a recipe YAML (``seed`` then overrides the recipe's)."""
    eval_dir, out_dir, spec = Path(eval_dir), Path(out_dir), Path(spec)
    if spec.suffix in (".yaml", ".yml"):
        run, assets = spec_from_recipe(spec, seed)
    else:
        run, folder = read_run_spec(spec)
        refs = [r.pattern for r in run.attacks if r.pattern] + [d.asset for r in run.attacks for d in r.donors]
        assets = {ref: read_asset(folder, ref) for ref in refs}
    record = pick_record(run, attack)
    if record.target is None:
        raise SpecError(f"attack {record.id!r} has no target class; nothing to measure on an evaluation split")
    write_run_spec(out_dir, run, assets)
    attack_obj, binding = load_bindings(str((out_dir / SPEC_FILE).resolve()), run.run_id)[record.id]
    if binding.trigger is None and not attack_obj.capabilities & {TEXT_TRIGGER, PAYLOAD_TRIGGER}:
        raise SpecError(f"attack {record.id!r} ({record.attack}) has no trigger to apply to an evaluation split")
    return EvalTriggerJob(eval_dir, out_dir, run.run_id, record.id, EvalLabels.from_folder(eval_dir))


def apply_trigger_to_eval(eval_dir: str | Path, spec: str | Path, out_dir: str | Path, attack: str | None = None,
                          seed: int | None = None) -> dict[str, Any]:
    """Trigger the evaluation split in this process (small splits); the CLI runs the same job on Dask."""
    job = prepare_eval_trigger(Path(eval_dir), spec, Path(out_dir), attack, seed)
    return run_job_local(job)
