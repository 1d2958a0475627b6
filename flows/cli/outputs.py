"""The command line's side of the output guards (``poisonlab.flows.guards``): a refusal is a one-line error."""

from __future__ import annotations

from pathlib import Path

from poisonlab.flows.cli.app import fail
from poisonlab.flows.guards import OutputGuardError, check_output, record_output


def guard(out: Path | None, kind: str, *inputs: Path | None) -> None:
    """Exit with a one-line error, before any work, when ``out`` cannot take this command's output."""
    if out is None:
        return
    try:
        check_output(out, kind, inputs)
    except OutputGuardError as exc:
        fail(str(exc))


def done(out: Path | None, kind: str) -> None:
    """Record the kind of a finished output folder."""
    if out is not None:
        record_output(out, kind)
