"""Named components with typed parameters: attacks, detectors, decisions, model configs, stages.

The CLI and flows look components up by name and can list them with their parameter schema; there is
no if/elif dispatch anywhere. Packages contribute components through the ``poisonlab.components``
entry-point group, so this core never imports the layers above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T")


class Params(BaseModel):
    """Base for parameter models: unknown parameters are an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistryError(LookupError):
    """An unknown component or invalid parameters: raised before any work starts."""


@dataclasses.dataclass(frozen=True)
class Component(Generic[T]):
    name: str
    kind: str
    factory: Callable[..., T]
    params: type[BaseModel]
    summary: str

    def parse(self, raw: dict[str, Any] | None = None) -> BaseModel:
        """Validate raw parameters; unknown names are reported with the known ones, before any work."""
        raw = dict(raw or {})
        known = sorted(self.params.model_fields)
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise RegistryError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for {self.kind} {self.name!r}; "
                f"known: {', '.join(known) or 'none'}"
            )
        try:
            return self.params.model_validate(raw)
        except ValidationError as exc:
            raise RegistryError(f"invalid parameters for {self.kind} {self.name!r}: {exc}") from exc

    def create(self, raw: dict[str, Any] | BaseModel | None = None) -> T:
        params = raw if isinstance(raw, BaseModel) else self.parse(raw)
        return self.factory(params)

    def describe(self) -> dict[str, Any]:
        fields = {}
        for fname, field in self.params.model_fields.items():
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            fields[fname] = {
                "type": getattr(field.annotation, "__name__", str(field.annotation)),
                "required": field.is_required(),
                "default": default if isinstance(default, (str, int, float, bool, type(None), list)) else repr(default),
                "help": field.description or "",
            }
        return {"name": self.name, "kind": self.kind, "summary": self.summary, "params": fields}


class Registry(Generic[T]):
    """Components of one kind, by name."""

    def __init__(self, kind: str, autoload: bool = False) -> None:
        self.kind = kind
        self.autoload = autoload  # import the entry-point plugins before answering "what is there?"
        self._items: dict[str, Component[T]] = {}

    def _load(self) -> None:
        if self.autoload:
            load_plugins()

    def register(self, name: str, params: type[BaseModel] = Params, summary: str | None = None):
        """Decorator: register a factory ``f(params) -> component`` (a class works too)."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name].factory is not factory:
                raise RegistryError(f"{self.kind} {name!r} is already registered")
            doc = summary if summary is not None else (factory.__doc__ or "").strip().split("\n")[0]
            self._items[name] = Component(name, self.kind, factory, params, doc)
            return factory

        return wrap

    def get(self, name: str) -> Component[T]:
        if name not in self._items:
            self._load()  # a component may live in a package that has not been imported yet
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, raw: dict[str, Any] | None = None) -> T:
        return self.get(name).create(raw)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def loaded_names(self) -> list[str]:
        """The components registered so far, without importing plugins (which may load torch): for help
        text printed at start-up; ``names()`` is the full list."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[Component[T]]:
        return iter(self._items[n] for n in self.names())


_REGISTRIES: dict[str, Registry[Any]] = {}


def get_registry(kind: str) -> Registry[Any]:
    """The registry of a kind, created on first use (so modules can register without import order)."""
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind, autoload=True)
    return _REGISTRIES[kind]


def list_registries() -> dict[str, Registry[Any]]:
    load_plugins()
    return dict(sorted(_REGISTRIES.items()))


_LOADED = False


def load_plugins() -> None:
    """Import every module named in the ``poisonlab.components`` entry-point group (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in sorted(entry_points(group="poisonlab.components"), key=lambda e: e.name):
        import_module(ep.value)
