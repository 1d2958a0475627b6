"""Component specs on the command line: ``[column=]name[:key=value,key=value]`` or a JSON object.

Values are read as YAML scalars (``k=16``, ``fraction=0.02``, ``near_duplicate=null``); dotted keys set
nested parameters (``index.kind=exact``); ``[a;b]`` is a list (``detectors=[kdist;dao]``). A spec that
starts with ``{`` is JSON with the name under ``"name"`` (``{"name": "rules", "rules": [...]}``), and
``@file.json`` / ``@file.yaml`` reads that object from a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class SpecError(ValueError):
    """A spec that cannot be read; the message says which part."""


def _value(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_value(v) for v in inner.split(";")] if inner else []
    try:
        return yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:
        raise SpecError(f"cannot read the value {text!r}: {exc}") from exc


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise SpecError(f"{dotted!r}: {part!r} is not a group of parameters")
    target[parts[-1]] = value


def _load_object(text: str) -> dict[str, Any]:
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.exists():
            raise SpecError(f"spec file {path} does not exist")
        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"invalid JSON spec: {exc}") from exc
    if not isinstance(data, dict) or "name" not in data:
        raise SpecError('a JSON spec is an object with a "name" key')
    return data


def parse_spec(text: str) -> tuple[str, str, dict[str, Any]]:
    """``(column, name, params)`` from one spec; the column defaults to the name."""
    text = text.strip()
    column = None
    if text.startswith(("{", "@")):
        data = dict(_load_object(text))
        name = str(data.pop("name"))
        column = str(data.pop("column", name))
        return column, name, data
    head, _, rest = text.partition(":")
    if "=" in head:
        column, _, head = head.partition("=")
        column = column.strip()
    name = head.strip()
    for what, value in (("name", name), ("column", column or name)):
        if not _NAME.match(value):
            raise SpecError(f"invalid {what} {value!r} in spec {text!r}")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in _split(rest))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SpecError(f"expected key=value in spec {text!r}, got {item!r}")
        _set(params, key.strip(), _value(value))
    return column or name, name, params


def _split(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
