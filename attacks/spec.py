"""The saved attack spec (``attack.json``) and the public API that rebuilds a trigger from it.

A poisoning run writes ``attack.json`` into its output folder before any shard is processed: the seed,
each attack with all of its parameters (defaults included), its target, the caption pool it drew from,
the hashes of its pattern and donor images, and the planned counts. Workers poison from this file, and
evaluation rebuilds the trigger from it, so both use the very same trigger by construction.

    from poisonlab.attacks import load_attack
    spec = load_attack("poisoned/")            # a run folder, its attack.json, or a recipe YAML
    spec.target                                # "red circle"
    spec.is_image_trigger                      # True for badnets/blended/sig/wanet/label_consistent
    spec.capabilities                          # what the attack declares: image_trigger, text_trigger, ...
    triggered = spec.apply_image(image, key)   # HxWx3 uint8 -> HxWx3 uint8
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from poisonlab.attacks.assets import AssetError, AssetRef, read_asset, write_asset
from poisonlab.attacks.base import PAYLOAD_TRIGGER, TARGET_IMAGES, TEXT_TRIGGER, Attack, Binding, Donor
from poisonlab.attacks.captions import template_pool
from poisonlab.attacks.components import ATTACKS
from poisonlab.attacks.image_triggers import PatternContext
from poisonlab.attacks.recipe import ConfiguredAttack, configure, load_recipe
from poisonlab.pipelines.sample import Sample
from poisonlab.shards.layout import atomic_write_bytes

SPEC_FILE = "attack.json"
FORMAT = "poisonlab.attack/1"


class SpecError(ValueError):
    """A spec that cannot be used: unknown format, tampered content, another run in the same folder."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclasses.dataclass(frozen=True)
class DonorRef:
    key: str | None
    caption: str | None
    asset: AssetRef

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "caption": self.caption, **self.asset.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DonorRef:
        return cls(data.get("key"), data.get("caption"), AssetRef.from_dict(dict(data)))


@dataclasses.dataclass(frozen=True)
class AttackRecord:
    """One attack of a run, fully resolved."""

    id: str
    attack: str
    target: str | None
    params: dict[str, Any]
    rate: float | None
    count: int | None
    planned: int
    captions: tuple[str, ...] = ()
    pattern: AssetRef | None = None
    donors: tuple[DonorRef, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "attack": self.attack, "target": self.target, "params": self.params,
            "rate": self.rate, "count": self.count, "planned": self.planned, "captions": list(self.captions),
            "pattern": self.pattern.to_dict() if self.pattern else None,
            "donors": [d.to_dict() for d in self.donors],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AttackRecord:
        return cls(
            id=data["id"], attack=data["attack"], target=data.get("target"), params=dict(data.get("params") or {}),
            rate=data.get("rate"), count=data.get("count"), planned=int(data.get("planned", 0)),
            captions=tuple(data.get("captions") or ()),
            pattern=AssetRef.from_dict(data["pattern"]) if data.get("pattern") else None,
            donors=tuple(DonorRef.from_dict(d) for d in data.get("donors") or ()),
        )


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a run did, minus the bytes of its assets. ``run_id`` is a hash of the content."""

    seed: int
    attacks: tuple[AttackRecord, ...]
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"format": FORMAT, "seed": self.seed, "dataset": self.dataset,
                "attacks": [a.to_dict() for a in self.attacks]}

    @functools.cached_property
    def run_id(self) -> str:
        return hashlib.sha256(canonical_json(self.body())).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "run_id": self.run_id}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        if data.get("format") != FORMAT:
            raise SpecError(f"unknown attack spec format {data.get('format')!r}; expected {FORMAT!r}")
        spec = cls(seed=int(data["seed"]), attacks=tuple(AttackRecord.from_dict(a) for a in data["attacks"]),
                   dataset=dict(data.get("dataset") or {}))
        if data.get("run_id") not in (None, spec.run_id):
            raise SpecError(f"attack spec content does not match its run id {data.get('run_id')!r} (edited?)")
        return spec

    def record(self, attack_id: str) -> AttackRecord:
        for rec in self.attacks:
            if rec.id == attack_id:
                return rec
        raise SpecError(f"no attack {attack_id!r} in this run; attacks: {[a.id for a in self.attacks]}")


def write_run_spec(directory: Path, spec: RunSpec, assets: Mapping[AssetRef, bytes], overwrite: bool = False) -> Path:
    """Write assets, then ``attack.json`` (atomically). A folder holding anything else is refused.

    ``overwrite`` replaces another poisoning run's spec (its shards are then redone: shards.markers).
    """
    directory = Path(directory)
    path = directory / SPEC_FILE
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8")).get("run_id")
        except ValueError:
            existing = "unreadable"
        if existing != spec.run_id and not overwrite:
            raise SpecError(f"{directory} already holds another poisoning run ({existing}); "
                           "use a fresh folder, or --overwrite to replace it")
    elif directory.is_dir() and any(directory.iterdir()):
        # its complete-looking shards would be taken for this run's and skipped
        raise SpecError(f"{directory} is not empty and holds no poisoning run; use a fresh folder")
    directory.mkdir(parents=True, exist_ok=True)
    for ref, data in sorted(assets.items(), key=lambda kv: kv[0].sha256):
        write_asset(directory, ref, data)
    atomic_write_bytes(path, json.dumps(spec.to_dict(), indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return path


def read_run_spec(path: Path) -> tuple[RunSpec, Path]:
    """A run folder or its ``attack.json``; returns the spec and the folder its assets are in."""
    path = Path(path)
    file = path / SPEC_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read attack spec {file}: {exc}") from exc
    return RunSpec.from_dict(data), file.parent


def bind(record: AttackRecord, spec: RunSpec, asset: Callable[[AssetRef], bytes]) -> tuple[Attack, Binding]:
    """Rebuild an attack and its binding from a record (the same in driver, workers and evaluation)."""
    attack = ATTACKS.create(record.attack, record.params)
    trigger = attack.trigger()
    pattern = asset(record.pattern) if record.pattern else None
    if trigger is not None:
        trigger = trigger.bind(spec.seed, record.id, pattern)
    donors = tuple(Donor(d.key, d.asset.ext, asset(d.asset), d.caption) for d in record.donors)
    binding = Binding(id=record.id, seed=spec.seed, target=record.target, run_id=spec.run_id, params=record.params,
                      captions=record.captions, trigger=trigger, donors=donors, pattern=pattern)
    return attack, binding


@functools.lru_cache(maxsize=8)
def load_bindings(spec_path: str, run_id: str) -> dict[str, tuple[Attack, Binding]]:
    """Every attack of a saved run, bound; cached per process (workers load a run once)."""
    spec, folder = read_run_spec(Path(spec_path))
    if spec.run_id != run_id:
        raise SpecError(f"{spec_path} holds run {spec.run_id}, expected {run_id}")
    return {rec.id: bind(rec, spec, lambda ref: read_asset(folder, ref)) for rec in spec.attacks}


def record_for(configured: ConfiguredAttack, planned: int, captions: tuple[str, ...] = (),
               pattern: AssetRef | None = None, donors: tuple[DonorRef, ...] = ()) -> AttackRecord:
    entry = configured.entry
    return AttackRecord(
        id=configured.id, attack=entry.attack, target=entry.target,
        params=configured.attack.params.model_dump(mode="json"), rate=entry.rate, count=entry.count,
        planned=planned, captions=captions, pattern=pattern, donors=donors,
    )


def spec_from_recipe(path: Path, seed: int | None = None) -> tuple[RunSpec, dict[AssetRef, bytes]]:
    """A spec straight from a recipe, without a dataset: enough to rebuild its triggers.

    Template caption pools are rendered; dataset pools and donor images need the dataset and stay empty.
    """
    recipe = load_recipe(path)
    if seed is not None:
        recipe = recipe.model_copy(update={"seed": seed})
    assets: dict[AssetRef, bytes] = {}
    records = []
    for configured in configure(recipe):
        attack = configured.attack
        pattern = None
        made = attack.pattern_asset(PatternContext(Path(path).parent, None, configured.entry.target, recipe.seed,
                                                   configured.id))
        if made is not None:
            pattern, data = made
            assets[pattern] = data
        source = attack.caption_source()
        captions = template_pool(configured.entry.target, source[1]) if source and source[0] == "templates" \
            and configured.entry.target else ()
        records.append(record_for(configured, planned=0, captions=captions, pattern=pattern))
    return RunSpec(seed=recipe.seed, attacks=tuple(records), dataset={}), assets


class AttackSpec:
    """One attack of a run, rebuilt from its spec: the handle a trainer or evaluator uses.

    ``apply_image(image, key)`` triggers an ``HxWx3 uint8`` array exactly as the poisoning run did
    (``key`` only matters for keyed-random placements; any string works for new images).
    """

    def __init__(self, spec: RunSpec, record: AttackRecord, attack: Attack, binding: Binding) -> None:
        self.run = spec
        self.record = record
        self._attack = attack
        self._binding = binding

    id = property(lambda self: self.record.id, doc="attack id in the run (unique)")
    name = property(lambda self: self.record.attack, doc="registered attack name, e.g. 'badnets'")
    target = property(lambda self: self.record.target, doc="target class the trigger maps to")
    seed = property(lambda self: self.run.seed)
    run_id = property(lambda self: self.run.run_id)
    params = property(lambda self: dict(self.record.params), doc="all parameters, defaults included")
    is_image_trigger = property(lambda self: self._binding.trigger is not None, doc="has an image trigger")
    capabilities = property(lambda self: self._attack.capabilities, doc="what the attack declares it does")
    has_text_trigger = property(lambda self: TEXT_TRIGGER in self.capabilities, doc="has a caption trigger")
    has_payload_trigger = property(lambda self: PAYLOAD_TRIGGER in self.capabilities,
                                   doc="has a trigger on a non-image payload (a graph)")
    has_target_images = property(lambda self: TARGET_IMAGES in self.capabilities,
                                 doc="wants its donor images classified as the target")
    donors = property(lambda self: self._binding.donors, doc="the donor images of the run (empty from a recipe)")

    def locate(self, image: np.ndarray, key: str = "") -> tuple[np.ndarray, dict[str, Any]]:
        """The triggered image and where the trigger went."""
        if self._binding.trigger is None:
            raise SpecError(f"attack {self.id!r} ({self.name}) has no image trigger")
        return self._binding.trigger.apply(image, key)

    def apply_image(self, image: np.ndarray, key: str = "") -> np.ndarray:
        return self.locate(image, key)[0]

    @property
    def trigger_fn(self) -> Callable[[np.ndarray, str], np.ndarray]:
        """``fn(image, key) -> image``, e.g. for a data loader."""
        return self.apply_image

    def apply_text(self, caption: str, key: str = "") -> str:
        """Insert the text trigger into a caption (attacks with the text_trigger capability)."""
        try:
            return self._attack.apply_text(caption, key, self._binding)
        except NotImplementedError as exc:
            raise SpecError(str(exc)) from exc

    def apply_sample(self, sample: Sample) -> Sample:
        """Trigger a sample's payload as the evaluation split is triggered (caption kept): attacks with the
        payload_trigger capability, e.g. a graph sample whose ``.npz`` gets the run's subgraph."""
        if not self.has_payload_trigger:
            raise SpecError(f"attack {self.id!r} ({self.name}) has no payload trigger")
        return self._attack.trigger_sample(sample, self._binding, "eval_trigger", "eval_trigger", sample.text)

    def __repr__(self) -> str:
        return f"AttackSpec(id={self.id!r}, name={self.name!r}, target={self.target!r}, run={self.run_id})"


def pick_record(spec: RunSpec, attack: str | None) -> AttackRecord:
    """The attack named by id (or unique name); else the only one, or the only one with an image trigger."""
    if attack is not None:
        by_id = [r for r in spec.attacks if r.id == attack]
        by_name = [r for r in spec.attacks if r.attack == attack]
        if by_id or len(by_name) == 1:
            return (by_id or by_name)[0]
        raise SpecError(f"no single attack {attack!r} in this run; ids: {[r.id for r in spec.attacks]}")
    if len(spec.attacks) == 1:
        return spec.attacks[0]
    triggers = [r for r in spec.attacks if ATTACKS.create(r.attack, r.params).trigger() is not None]
    if len(triggers) == 1:
        return triggers[0]
    raise SpecError(f"this run has several attacks; choose one of {[r.id for r in spec.attacks]}")


def load_attack(path: str | Path, attack: str | None = None, seed: int | None = None) -> AttackSpec:
    """Rebuild one attack from a run folder, its ``attack.json``, or a recipe (``.yaml``/``.yml``).

    ``attack`` picks an attack id (or name) when the run has several; ``seed`` applies to recipes only.
    """
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        spec, memory = spec_from_recipe(path, seed)

        def asset(ref: AssetRef) -> bytes:
            return memory[ref]
    else:
        spec, folder = read_run_spec(path)

        def asset(ref: AssetRef) -> bytes:
            return read_asset(folder, ref)
    record = pick_record(spec, attack)
    try:
        attack_obj, binding = bind(record, spec, asset)
    except AssetError as exc:
        raise SpecError(str(exc)) from exc
    return AttackSpec(spec, record, attack_obj, binding)
