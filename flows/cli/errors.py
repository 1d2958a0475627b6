"""Errors every command reports as one line (exit code 1) instead of a traceback.

A full disk, a refused checkpoint, a folder written with another configuration or a cluster worker that
cannot see the data (``TaskPathError``, raised on the worker and sent back) are the user's to fix,
not bugs: the message says what and where. Anything else still raises, so real bugs keep their traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from poisonlab.flows.guards import OutputGuardError
from poisonlab.pipelines.visibility import TaskPathError
from poisonlab.shards.markers import MarkerConflict

F = TypeVar("F", bound=Callable[..., Any])


def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    """Checkpoint errors live beside torch: imported only when a command has already loaded it."""
    import sys

    zoo = sys.modules.get("poisonlab.models.zoo")
    return (zoo.CheckpointError,) if zoo is not None else ()


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    return " ".join(str(exc).split()) or type(exc).__name__


def reported(fn: F) -> F:
    """Wrap a command so user-fixable errors become ``error: ...`` on stderr and exit code 1."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OSError, MarkerConflict, OutputGuardError, TaskPathError, *_checkpoint_errors()) as exc:
            typer.echo(f"error: {describe(exc)}", err=True)
            raise typer.Exit(code=1) from None

    return command  # type: ignore[return-value]
