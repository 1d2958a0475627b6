"""The typer application and options shared by every subcommand.

Options that several commands share come as one group (``option_group``): the command declares one
parameter (``options: RunOptions``) and typer sees the group's options in its place, so no command repeats
``--executor``, ``--dask-address``, ``--workers``, ``--json``, ``--quiet`` and ``--verbose``. A bad option
value (``--executor dask``) is one ``error:`` line, like every other user error, not click's usage box.

One spelling per thing across commands: a command's input folder comes from ``with_input`` (``--in``), an
option with a fixed set of values is typed ``choice(CONSTANT)`` (the values come from where they are used
and appear in ``--help``), and help is rendered by ``flows.cli.helptext`` (plain, 80 columns).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from poisonlab.flows.cli import helptext
from poisonlab.flows.cli.errors import reported as _reported
from poisonlab.flows.cli.paths import scheduler_address, with_absolute_paths
from poisonlab.flows.runtime import EXECUTORS, Executor, RunnerSpec


class _Command(TyperCommand):
    """A command whose bad option values (a choice not offered, a missing option) are one ``error:`` line."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except typer.BadParameter as exc:  # typer's own click (typer >= 0.26 vendors it), missing options included
            message = " ".join(exc.format_message().replace("Value error, ", "").split())
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Plain rows that keep option names whole at 80 columns (``flows.cli.helptext``)."""
        helptext.format_params(self.get_params(ctx), ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """The usage line without hidden parameters (an old positional spelling kept as an alias)."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not getattr(param, "hidden", False):
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class _Group(TyperGroup):
    """A group whose help lists each command's whole summary, wrapped at the terminal's width."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        helptext.format_commands(self, ctx, formatter)


class _App(typer.Typer):
    """Commands report user-fixable errors (a full disk, a refused checkpoint) as one line: flows.cli.errors,
    and get their paths absolute (flows.cli.paths), so a cluster's workers see the folders the user meant."""

    def command(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("cls", _Command)
        register = super().command(*args, **kwargs)
        return lambda fn: register(_reported(with_absolute_paths(fn)))


APP_SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,  # plain help: rich markup ate `[column=]` and squeezed option names
    "cls": _Group,
}

app = _App(name="poisonlab", help="Poison and sanitize web-scale image-text datasets stored as WebDataset shards.",
           **APP_SETTINGS)


def sub_app(name: str, help: str) -> _App:
    """A group of subcommands (``federate``, ``splitview``) that behaves as the top-level commands do:
    one-line errors, absolute paths, the same help."""
    group = _App(help=help, **APP_SETTINGS)
    app.add_typer(group, name=name)
    return group


def choice(values: Iterable[str]) -> Any:
    """An option type for a fixed set of values kept elsewhere (a registry, a constant): typer lists them in
    ``--help`` and refuses another value with one ``error:`` line naming them."""
    return Literal[tuple(values)]  # type: ignore[valid-type]


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("poisonlab")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"poisonlab {package_version()}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Poison and sanitize web-scale image-text datasets stored as WebDataset shards."""

JsonOpt = typer.Option(False, "--json", help="print machine-readable JSON on stdout")
OverwriteOpt = typer.Option(False, "--overwrite", help="redo shards in --out that another configuration wrote "
                            "(else such a folder is refused)")

Command = TypeVar("Command", bound=Callable[..., Any])


def runner_spec(executor: str, dask_address: str | None, workers: int | None, progress: bool = True,
                verbose: bool = False, quiet: bool = False, dask_scheduler_file: Path | None = None) -> RunnerSpec:
    """The runner of a command, checked before the command writes anything (an unknown executor fails here)."""
    executor = getattr(executor, "value", executor)
    if executor not in EXECUTORS:
        fail(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if verbose and quiet:
        fail("--verbose and --quiet contradict each other; give one")
    if dask_scheduler_file is not None:
        if dask_address:
            fail("give --dask-address or --dask-scheduler-file, not both")
        try:
            dask_address = scheduler_address(dask_scheduler_file)
        except ValueError as exc:
            fail(str(exc))
    return RunnerSpec(executor=executor, dask_address=dask_address, workers=workers, progress=progress and not quiet,
                      verbose=verbose, quiet=quiet)


def emit(result: Any, as_json: bool, human: str) -> None:
    """Print JSON for scripts or a short human summary."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    else:
        typer.echo(human)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def option_group(name: str, group: Callable[..., Any], options: dict[str, tuple[Any, Any]]) -> Callable[[Command], Command]:
    """Replace the command's parameter ``name`` by ``options`` (field -> (annotation, typer option)), in its
    place (so ``--in`` comes first in the help), and call the command with ``group(**values)`` under ``name``."""

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        params = list(signature.parameters.values())
        at = next((i for i, p in enumerate(params) if p.name == name), len(params))
        kind = params[at].kind if at < len(params) else inspect.Parameter.KEYWORD_ONLY
        added = [inspect.Parameter(field, kind, default=option, annotation=annotation)
                 for field, (annotation, option) in options.items()]
        kept = [*params[:at], *added, *params[at + 1:]]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {field: kwargs.pop(field) for field in options}
            return command(*args, **{name: group(**values)}, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=kept)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in kept}
        return wrapper  # type: ignore[return-value]

    return decorate


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where a command's shard tasks run, and whether it prints JSON (then without a progress bar)."""

    runner: RunnerSpec = RunnerSpec()
    as_json: bool = False

    @classmethod
    def from_options(cls, executor: Executor, dask_address: str | None, dask_scheduler_file: Path | None,
                     workers: int | None, as_json: bool, quiet: bool, verbose: bool) -> RunOptions:
        return cls(runner_spec(executor, dask_address, workers, progress=not as_json, verbose=verbose, quiet=quiet,
                               dask_scheduler_file=dask_scheduler_file), as_json)

    def emit(self, result: Any, human: str) -> None:
        emit(result, self.as_json, human)


with_run_options = option_group("options", RunOptions.from_options, {
    "executor": (Executor, typer.Option(
        Executor.auto, "--executor", case_sensitive=False,
        help="auto: in-process below 8 shards, else (or with --dask-address/--workers) as prefect; "
             "local: in-process; prefect: a Prefect flow on Dask")),
    "dask_address": (str | None, typer.Option(None, "--dask-address", help="tcp://HOST:PORT of an existing Dask scheduler")),
    "dask_scheduler_file": (Path | None, typer.Option(None, "--dask-scheduler-file",
                                                      help="scheduler file of an existing Dask cluster (dask-jobqueue, "
                                                      "dask scheduler --scheduler-file)")),
    "workers": (int | None, typer.Option(None, "--workers", help="local Dask workers (default: one per core)")),
    "as_json": (bool, JsonOpt),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", help="no progress bars: only errors and the final summary")),
    "verbose": (bool, typer.Option(False, "--verbose", "-v", help="show Dask's and Prefect's INFO logs")),
})
"""Give a command the runner options: it declares ``options: RunOptions`` (after ``@app.command()``)."""


NO_INPUT = Path()  # the placeholder default of a parameter that @with_input fills from --in


def _one_input(input_option: Path | None, input_positional: Path | None) -> Path:
    if input_option is not None and input_positional is not None:
        fail("give the input folder once, as --in DIR")
    if input_option is None and input_positional is None:
        fail("missing option '--in' (the folder to read)")
    return input_option or input_positional  # type: ignore[return-value]


def with_input(name: str, help: str) -> Callable[[Command], Command]:
    """Give a command its input folder as ``--in DIR`` under ``name``: every command spells its input so.

    The positional form of earlier releases (``clean SHARDS``, ``stats DIR``) still works, hidden from the
    help, so scripts keep running; giving both is an error."""
    return option_group(name, _one_input, {
        "input_option": (Path | None, typer.Option(None, "--in", help=f"{help}  [required]")),
        "input_positional": (Path | None, typer.Argument(None, hidden=True, metavar="IN")),
    })
