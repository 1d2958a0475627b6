"""Embedders: what turns a shard's samples into vectors, one registered component per kind of model.

An embedder produces named **spaces** (open_clip: ``image`` and ``text``; a graph encoder: ``graph``; a
test's toy: whatever it declares). The embed step knows nothing about models: it asks the embedder which
payloads it reads, lets it decode each sample into per-space inputs, hands it batches, and stores one
array per space. Detectors then name the spaces they read, so a new modality needs a new embedder and
nothing else.

Registered with ``get_registry("embedder")`` (``poisonlab components embedder`` lists them); a package
adds its own through the ``poisonlab.components`` entry point, a test by calling ``EMBEDDERS.register``.

Run settings shared by every embedder (``device``, ``precision``, ``seed``, ``max_pixels``, ``batch_size``,
and the ``arch``/``weights`` of a ``ModelSpec``) are handed to an embedder only when its parameter model declares
them: no embedder is special-cased by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from poisonlab.filters.specs import parse_spec
from poisonlab.pipelines.registry import RegistryError, get_registry
from poisonlab.pipelines.sample import Sample

EMBEDDERS = get_registry("embedder")
DEFAULT_EMBEDDER = "open_clip"
SPACE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclasses.dataclass
class Decoded:
    """One sample's inputs per space (absent when it has none) and why the others are missing."""

    inputs: dict[str, Any]
    missing: list[str] = dataclasses.field(default_factory=list)


class Embedder(ABC):
    """The protocol every embedder follows (subclass it, set ``spaces`` and ``payload_extensions``)."""

    spaces: ClassVar[tuple[str, ...]] = ()  # every space this kind of embedder can produce
    payload_space: ClassVar[str | None] = None  # the space of the sample's own payload (what ``sample`` means)
    payload_extensions: ClassVar[frozenset[str]] = frozenset()  # payloads whose samples it reads
    # may ``embed_prepared`` run on several batches at once, in threads? (the embed step's model streams)
    concurrent_batches: ClassVar[bool] = False
    # may ``decode`` and ``prepare`` run on several samples or batches at once, in threads? (the embed step's
    # input threads, which keep an accelerator fed)
    concurrent_inputs: ClassVar[bool] = False
    # may ``decode`` run in other processes, on an instance that was never set up (it needs only the params),
    # with its ``Decoded`` pickled back? (the embed step's input processes, on an accelerator)
    decodes_in_processes: ClassVar[bool] = False
    # do a row's floats depend on the batch it ran in and on the torch threads? (a model's kernels sum in an
    # order that does): then the embed step's batch size and threads are settings its store keeps
    batching_changes_floats: ClassVar[bool] = False

    def __init__(self, params: BaseModel) -> None:
        self.params = params

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load heavy resources (weights) once per worker process."""

    def accepts(self, ext: str | None) -> bool:
        """Whether a payload of this extension is one this embedder can read."""
        return ext is not None and ext in self.payload_extensions

    @abstractmethod
    def dims(self) -> dict[str, int]:
        """Dimension of each space this instance writes (after ``setup``)."""

    @abstractmethod
    def decode(self, sample: Sample) -> Decoded:
        """Per-space inputs of a live sample; a payload it cannot read is a reason, never an exception."""

    @abstractmethod
    def embed(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """Embed a batch (space -> decoded inputs) into float32 arrays (space -> (n, dim)), L2-normalised."""

    def prepare(self, batch: Mapping[str, Sequence[Any]]) -> Mapping[str, Any]:
        """The model-free part of ``embed`` (pixels, tokens), which the embed step runs in a reading thread
        ahead of the model. It must not touch the model; by default there is none."""
        return batch

    def embed_prepared(self, prepared: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``embed`` of a batch that went through ``prepare``: ``embed(b) == embed_prepared(prepare(b))``."""
        return self.embed(prepared)

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What the outputs depend on (architecture, weight digests, seeds): recorded with the store."""

    def label(self) -> str:
        """A readable prefix of the store's folder name."""
        return type(self).__name__.lower()

    def settings(self) -> dict[str, Any]:
        """Run settings that change what a shard's file holds but not which model wrote it (device kind,
        precision, compiled kernels, a decoding cap): recorded with the store, which holds one set of them,
        so the shards a rerun adds agree with the ones it resumes. None by default."""
        return {}

    def fingerprint(self) -> str:
        """The string hashed into the store id: any change of identity is a new store."""
        return json.dumps(self.identity(), sort_keys=True)

    def store_id(self) -> str:
        digest = hashlib.sha256(self.fingerprint().encode()).hexdigest()[:12]
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.label())[:48]}-{digest}"

    def details(self) -> dict[str, Any]:
        """Extra, human-facing facts written into the store's ``model.json`` (image size, ...)."""
        return {}


class ModelEmbedder(Embedder):
    """An embedder backed by a model loaded in ``setup`` (once per process) onto a device its params name.

    A torch forward pass in inference mode changes nothing it shares, so batches may run in threads at once.
    """

    concurrent_batches = True
    batching_changes_floats = True

    def __init__(self, params: BaseModel) -> None:
        super().__init__(params)
        self.loaded: Any = None

    @property
    def device(self) -> str:
        """The params' device, or CUDA when there is one."""
        import torch

        return getattr(self.params, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")

    def settings(self) -> dict[str, Any]:
        """The kind of device (``cuda:0`` and ``cuda:1`` compute alike; a CPU does not)."""
        return {"device": self.device.split(":")[0]}


def embedder_for(run: Path | None, asked: str | None = None) -> str:
    """The embedder asked for; else the one the run folder records (a graph run: graph_clip); else open_clip."""
    from poisonlab.models.zoo import run_component

    if asked:
        return asked
    return (run_component(run, "embedder") if run is not None else None) or DEFAULT_EMBEDDER


def payload_space(name: str) -> str | None:
    """The space a registered embedder writes for the sample's own payload (None: unknown embedder)."""
    try:
        return getattr(EMBEDDERS.get(name).factory, "payload_space", None)
    except RegistryError:
        return None


def declared_spaces(name: str) -> tuple[str, ...]:
    """The spaces a registered embedder declares it can produce."""
    return tuple(getattr(EMBEDDERS.get(name).factory, "spaces", ()))


def known_spaces() -> set[str]:
    """Every space some registered embedder can produce, and ``sample`` (the payload's own, whatever the
    modality): detector parameters are checked against these."""
    from poisonlab.filters.store import PAYLOAD_SPACE

    return {PAYLOAD_SPACE} | {s for component in EMBEDDERS for s in getattr(component.factory, "spaces", ())}


def check_space_name(space: str) -> str:
    if not SPACE_RE.match(space):
        raise ValueError(f"invalid space name {space!r}: lower-case letters, digits and _")
    return space


def resolve_params(name: str, shared: Mapping[str, Any], options: Mapping[str, Any]) -> BaseModel:
    """The embedder's parameters: run settings it declares, overridden by explicit options."""
    component = EMBEDDERS.get(name)
    fields = component.params.model_fields
    given = {k: v for k, v in shared.items() if k in fields and v is not None}
    return component.parse({**given, **options})


def create_embedder(name: str, params: BaseModel) -> Embedder:
    embedder = EMBEDDERS.get(name).create(params)
    if not isinstance(embedder, Embedder):
        raise RegistryError(f"embedder {name!r} does not implement poisonlab.filters.embedders.Embedder")
    for space in type(embedder).spaces:
        check_space_name(space)
    return embedder


def needs_model(spec: str) -> bool:
    """Whether an embedder spec (``name[:k=v,...]``) still needs a model (``arch``) from the caller."""
    _, name, options = parse_spec(spec)
    field = EMBEDDERS.get(name).params.model_fields.get("arch")
    return field is not None and field.is_required() and "arch" not in options
