"""Every path a command hands on is absolute, resolved here in the driver before anything is submitted.

Shard tasks may run on a cluster whose workers have other working directories (``--dask-address``,
``--dask-scheduler-file``): a relative path would name another folder there. Commands get their ``Path``
arguments made absolute by ``with_absolute_paths`` (applied to every command by the app), and string
options that may name a file (``--arch``, ``--weights``) through ``absolute_if_file``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def absolute(value: Any) -> Any:
    """A ``Path`` (or a list of them) made absolute against this process's working directory; else unchanged."""
    if isinstance(value, Path):
        return Path(os.path.abspath(value))
    if isinstance(value, list) and any(isinstance(v, Path) for v in value):
        return [absolute(v) for v in value]
    return value


def absolute_if_file(value: str | None) -> str | None:
    """A string option that names an existing file or folder, made absolute (a name such as a pretrained
    tag or a shipped architecture is left as it is)."""
    if value is None or not os.path.exists(value):
        return value
    return os.path.abspath(value)


def with_absolute_paths(fn: F) -> F:
    """Call the command with its ``Path`` arguments made absolute."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        return fn(*[absolute(a) for a in args], **{k: absolute(v) for k, v in kwargs.items()})

    return command  # type: ignore[return-value]


def scheduler_address(scheduler_file: Path) -> str:
    """The address in a Dask scheduler file (as ``distributed.Client(scheduler_file=...)`` reads it), read
    once in the driver: a missing or foreign file fails before anything is written."""
    import json

    try:
        return str(json.loads(Path(scheduler_file).read_text())["address"])
    except OSError as exc:
        raise ValueError(f"cannot read the Dask scheduler file {scheduler_file}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{scheduler_file} is not a Dask scheduler file (no 'address' in it)") from None
