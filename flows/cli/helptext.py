"""``--help`` as plain text that reads at 80 columns.

Typer's rich panels squeeze option names to fit a narrow terminal (``--dask-scheduler-fi…``), read help
text as rich markup (``[column=]name`` vanished) and print ``<int range> [x>=1]`` or ``<bool>`` beside
``--help``. Here each option is one row: its canonical name and the value it takes (a choice spelled out:
``<auto|local|prefect>``), then the help wrapped beside it (or below it when the name is long), never
broken at a hyphen, so ``--dask-address`` stays whole. A range is checked when the value is parsed, not
advertised. Further long names of an option are aliases (another tool's spelling, an old name): listed
after the help as ``also --url-list`` (an underscore spelling of a listed one, ``--url_list``, is
accepted without being listed), so the first column stays short.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Sequence
from typing import Any, get_args

import typer

NAME_COLUMN_MAX = 30  # as click: a longer name puts its help on the next line
GAP = 2


def value_type(param: Any, ctx: typer.Context) -> str:
    """What the option takes: ``<a|b>`` for a choice, ``<int>`` for a number with a range, nothing for a flag."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return str(param.metavar)
    desc = param.type_descriptor
    if desc.is_ranged:
        return f"<{desc.ranged_type_name}>"
    if desc.is_list and not desc.is_choice:
        return f"<{param._bare_type(get_args(desc.annotation)[0])}>"  # repeatable: the help says so
    return str(param.display_type_rich(ctx) or "")


def _names(param: Any, ctx: typer.Context) -> tuple[str, list[str]]:
    """The first column (canonical long name, short names, the negative of a switch) and the aliases."""
    longs = [o for o in param.opts if o.startswith("--")]
    shorts = [o for o in param.opts if not o.startswith("--")]
    canonical = [*shorts, *longs[:1]] if param.param_type_name == "option" else [param.name]
    aliases = [a for a in longs[1:] if "_" not in a or a.replace("_", "-") not in longs]  # --url_list: implied
    column = ", ".join(canonical)
    if getattr(param, "secondary_opts", None):
        column += " / " + ", ".join(param.secondary_opts)
    kind = value_type(param, ctx)
    return (f"{column} {kind}" if kind else column), aliases


def _extras(param: Any, ctx: typer.Context, aliases: Sequence[str]) -> list[str]:
    """Default, required, aliases: typer's own default text (enum values, the name of a switch's side)."""
    extras = []
    default = param._extract_default_help_str(ctx=ctx) if hasattr(param, "type_descriptor") else None
    if default is not None and (param.show_default or ctx.show_default):
        text = param._get_default_string(ctx=ctx, show_default_is_str=False, default_value=default)
        if text:
            extras.append(f"default: {text}")
    if param.required:
        extras.append("required")
    if aliases:
        extras.append("also " + ", ".join(aliases))
    return extras


def help_row(param: Any, ctx: typer.Context) -> tuple[str, str] | None:
    """One option or argument as (first column, help text); None when hidden."""
    if getattr(param, "hidden", False):
        return None
    column, aliases = _names(param, ctx)
    extras = _extras(param, ctx, aliases)
    text = re.sub(r"\s*\n\s*", " ", (param.help or "").strip())  # a docstring's line breaks, not its spacing
    if extras:
        text = f"{text}  [{'; '.join(extras)}]".strip()
    return column, text


def write_rows(formatter: Any, rows: list[tuple[str, str]]) -> None:
    """Click's definition list, wrapped without breaking words at hyphens (option names in help text)."""
    first = min(max(len(name) for name, _ in rows), NAME_COLUMN_MAX) + GAP
    indent = " " * formatter.current_indent
    width = max(formatter.width - formatter.current_indent - first, 20)
    for name, text in rows:
        lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]
        if len(name) + GAP <= first:
            formatter.write(f"{indent}{name:<{first}}{lines[0]}\n")
        else:
            formatter.write(f"{indent}{name}\n{indent}{'':<{first}}{lines[0]}\n")
        for line in lines[1:]:
            formatter.write(f"{indent}{'':<{first}}{line}\n")


def format_params(params: Sequence[Any], ctx: typer.Context, formatter: Any) -> None:
    """The Arguments and Options sections of a command's help."""
    for title, kind in (("Arguments", "argument"), ("Options", "option")):
        rows = [row for p in params if p.param_type_name == kind and (row := help_row(p, ctx)) is not None]
        if rows:
            with formatter.section(title):
                write_rows(formatter, rows)


def command_summary(command: Any) -> str:
    """A command's first paragraph, whole (click cut it to one line with ``...``)."""
    text = command.short_help or inspect.cleandoc(command.help or "").split("\n\n")[0]
    return re.sub(r"\s*\n\s*", " ", text.strip())


def format_commands(group: Any, ctx: typer.Context, formatter: Any) -> None:
    """The Commands section of a group's help: every visible command with its summary, wrapped."""
    commands = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    rows = [(name, command_summary(command)) for name, command in commands if command and not command.hidden]
    if rows:
        with formatter.section("Commands"):
            write_rows(formatter, rows)
