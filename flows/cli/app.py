"""The typer application and options shared by every subcommand."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from poisonlab.flows.cli.errors import reported as _reported
from poisonlab.flows.runtime import RUNNERS, RunnerSpec


class _App(typer.Typer):
    """Commands report user-fixable errors (a full disk, a refused checkpoint) as one line: flows.cli.errors."""

    def command(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        register = super().command(*args, **kwargs)
        return lambda fn: register(_reported(fn))


app = _App(
    name="poisonlab",
    help="Poison and sanitize web-scale image-text datasets stored as WebDataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ExecutorOpt = typer.Option("prefect", "--executor", help="prefect (a Prefect flow on Dask) or local (in-process)")
DaskAddressOpt = typer.Option(None, "--dask-address", help="tcp://HOST:PORT of an existing Dask scheduler")
WorkersOpt = typer.Option(None, "--workers", help="local Dask workers (default: one per core)")
JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON on stdout")
OverwriteOpt = typer.Option(False, "--overwrite", help="redo shards in --out that another configuration wrote "
                            "(else such a folder is refused)")


def runner_spec(executor: str, dask_address: str | None, workers: int | None, progress: bool = True) -> RunnerSpec:
    """The runner of a command, checked before the command writes anything (an unknown executor fails here)."""
    if executor not in RUNNERS:
        fail(f"unknown executor {executor!r}; known: {', '.join(sorted(RUNNERS))}")
    return RunnerSpec(executor=executor, dask_address=dask_address, workers=workers, progress=progress)


def emit(result: Any, as_json: bool, human: str) -> None:
    """Print JSON for scripts or a short human summary."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    else:
        typer.echo(human)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)
