"""The component registry: names and typed parameters, with errors that say what is known."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from poisonlab.pipelines.registry import Params, Registry, RegistryError, get_registry


class ScaleParams(Params):
    factor: float = Field(2.0, gt=0, description="how much")
    name: str = "x"


def _registry() -> Registry:
    reg = Registry("widget")

    @reg.register("scale", ScaleParams)
    class Scale:
        """Scale things by a factor."""

        def __init__(self, params: ScaleParams) -> None:
            self.factor = params.factor

    @reg.register("noop")
    def noop(params: Params) -> str:
        return "noop"

    return reg


def test_create_by_name_with_typed_params() -> None:
    reg = _registry()
    assert reg.create("scale", {"factor": 3}).factor == 3.0
    assert reg.create("scale").factor == 2.0
    assert reg.create("noop") == "noop"
    assert reg.names() == ["noop", "scale"] and "scale" in reg


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown widget 'scael'; known: noop, scale"):
        _registry().get("scael")


def test_unknown_parameter_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown parameter\(s\) 'facotr' for widget 'scale'; known: factor, name"):
        _registry().create("scale", {"facotr": 3})


def test_invalid_value_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="invalid parameters for widget 'scale'"):
        _registry().create("scale", {"factor": -1})
    with pytest.raises(RegistryError):
        _registry().create("scale", {"factor": "lots"})


def test_params_are_frozen() -> None:
    params = ScaleParams()
    with pytest.raises(ValidationError):
        params.factor = 5  # type: ignore[misc]


def test_registering_a_different_factory_under_a_taken_name_fails() -> None:
    reg = _registry()
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("noop")(lambda p: "other")


def test_describe_gives_the_schema() -> None:
    desc = _registry().get("scale").describe()
    assert desc["summary"] == "Scale things by a factor."
    assert desc["params"]["factor"] == {"type": "float", "required": False, "default": 2.0, "help": "how much"}


def test_plugins_register_through_entry_points() -> None:
    """The shards layer contributes validate_images through the poisonlab.components entry point."""
    from importlib import import_module
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="poisonlab.components")}
    assert eps["shards"] == "poisonlab.shards.components"
    import_module(eps["shards"])
    stage = get_registry("stage").get("validate_images").create({"max_pixels": 100})
    assert stage.max_pixels == 100
