"""Issue 13, "consistent flags": one spelling across commands, choices listed in ``--help``, help that reads
at 80 columns, the other tools' spellings accepted where they mean the same thing.

All fast: help is rendered and options are parsed; the one command that runs (sanitize) runs on 60 pairs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import typer
from conftest import make_synth, one_line_error
from typer.testing import CliRunner

from poisonlab.flows.cli import COMMAND_MODULES, app

for _module in COMMAND_MODULES:
    importlib.import_module(_module)

ROOT = typer.main.get_command(app)
README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: Any = ROOT, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf command of the app by its path (``("federate", "partition")``)."""
    found: dict[tuple[str, ...], Any] = {}
    for name, command in getattr(group, "commands", {}).items():
        if getattr(command, "commands", None):
            found.update(_commands(command, (*path, name)))
        else:
            found[(*path, name)] = command
    return found


COMMANDS = _commands()
IDS = [" ".join(path) for path in COMMANDS]


def _help(path: tuple[str, ...], columns: int = 80) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)})
    assert res.exit_code == 0, res.output
    return res.output


def _param(path: tuple[str, ...], opt: str) -> Any:
    return next(p for p in COMMANDS[path].params if opt in getattr(p, "opts", ()))


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_help_at_80_columns_keeps_every_option_whole(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for noise in ("<bool>", "range>", "x>=", "x<=", "…"):
        assert noise not in text, f"{noise!r} in\n{text}"
    for param in COMMANDS[path].params:
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        name = next(o for o in param.opts if o.startswith("--"))
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} cut or missing in\n{text}"


@pytest.mark.parametrize("path", [(), ("federate",), ("splitview",)], ids=["poisonlab", "federate", "splitview"])
def test_group_help_lists_every_command_with_its_whole_summary(path: tuple[str, ...]) -> None:
    text = _help(path)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    commands = text.split("Commands:")[1]
    assert not re.search(r"\.\.\.$", commands, re.M) and "<bool>" not in text, text  # click cut summaries so
    group = ROOT
    for name in path:
        group = group.commands[name]
    for name in group.commands:
        assert re.search(rf"^  {re.escape(name)} ", text, re.M), f"{name} missing in\n{text}"


@pytest.mark.parametrize("path", [("scan",), ("sanitize",)], ids=["scan", "sanitize"])
def test_detector_syntax_is_in_help_and_readme(path: tuple[str, ...]) -> None:
    """Rich markup used to eat ``[column=]``; the list syntax ``[a;b]`` was only in a docstring."""
    text = " ".join(_help(path).split())
    for fragment in ("[column=]name[:key=value,...]", "[a;b]", "--detector knn50=kdist:k=50"):
        assert fragment in text, text
    readme = README.read_text()
    assert "[column=]name[:key=value,...]" in readme and "[a;b]" in readme


READS_A_FOLDER = [("stats",), ("embed",), ("scan",), ("clean",), ("sanitize",), ("poison",), ("poison-eval",),
                  ("export",), ("train",), ("federate", "partition")]


@pytest.mark.parametrize("path", READS_A_FOLDER, ids=[" ".join(p) for p in READS_A_FOLDER])
def test_every_command_that_reads_a_folder_takes_in(path: tuple[str, ...]) -> None:
    assert _param(path, "--in").param_type_name == "option"
    visible_arguments = [p for p in COMMANDS[path].params if p.param_type_name == "argument" and not p.hidden]
    assert not visible_arguments, f"{path}: input is --in, not positional"


def test_the_old_positional_input_still_works_but_not_with_in(tiny_shards: Path) -> None:
    runner = CliRunner()
    by_option = runner.invoke(app, ["stats", "--in", str(tiny_shards), "--json"])
    by_position = runner.invoke(app, ["stats", str(tiny_shards), "--json"])
    assert by_option.exit_code == by_position.exit_code == 0, by_option.output + by_position.output
    assert json.loads(by_option.stdout) == json.loads(by_position.stdout)
    one_line_error(runner.invoke(app, ["stats", "--in", str(tiny_shards), str(tiny_shards)]), "once", "--in")
    one_line_error(runner.invoke(app, ["stats"]), "--in")
    assert "Usage: poisonlab stats [OPTIONS]\n" in _help(("stats",))  # the alias stays out of the usage line


def _training_precisions() -> tuple[str, ...]:
    from poisonlab.training.config import TrainSettings

    return get_args(TrainSettings.model_fields["precision"].annotation)


def test_train_defaults_are_the_training_settings_defaults() -> None:
    """A user who names no hyperparameter gets what TrainSettings (and so a recipe without them) gets."""
    import typer

    from poisonlab.training.config import TrainSettings

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    fields = {"model": "model", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed",
              "weight_decay": "weight_decay", "warmup_steps": "warmup_steps", "data_workers": "workers",
              "device": "device", "precision": "precision"}
    defaults = {p.name: p.default for p in command.params}
    for option, field in fields.items():
        assert defaults[option] == TrainSettings.model_fields[field].default, option


def _choices(module: str, name: str) -> tuple[str, ...]:
    return tuple(importlib.import_module(module).__dict__[name])


CHOICES = [  # (command, option, the constant its values come from)
    (("embed",), "--dtype", ("poisonlab.filters.store", "STORE_DTYPES")),
    (("train",), "--precision", ("poisonlab.flows.cli.train", "PRECISIONS")),
    (("ingest",), "--resize-mode", ("poisonlab.shards.ingest", "RESIZE_MODES")),
    (("ingest",), "--encode-format", ("poisonlab.shards.ingest", "ENCODE_FORMATS")),
    (("ingest",), "--hash-type", ("poisonlab.shards.urllists", "HASH_LENGTHS")),
    (("splitview", "build"), "--resize-mode", ("poisonlab.shards.ingest", "RESIZE_MODES")),
    (("recall",), "--roc-scale", ("poisonlab.filters.metrics", "ROC_SCALES")),
    (("clean",), "--executor", ("poisonlab.flows.runtime", "EXECUTORS")),
]


@pytest.mark.parametrize(("path", "option", "source"), CHOICES, ids=[f"{' '.join(p)} {o}" for p, o, _ in CHOICES])
def test_a_choice_lists_its_values_in_help_and_refuses_others_in_one_line(
        path: tuple[str, ...], option: str, source: tuple[str, str]) -> None:
    values = _choices(*source)
    help_line = next(line for line in _help(path, columns=200).splitlines() if line.strip().startswith(option))
    assert f"<{'|'.join(values)}>" in help_line, help_line
    res = CliRunner().invoke(app, [*path, option, "no-such-value"])
    one_line_error(res, option, "no-such-value", *values)


def test_choice_values_are_the_ones_their_components_accept() -> None:
    """The store's dtypes and the trainer's precisions are read where they are used (the command line
    spells the precisions itself only because poisonlab.training loads torch)."""
    from poisonlab.filters.embed import EmbedConfig

    assert get_args(get_type_hints(EmbedConfig)["dtype"]) == _choices("poisonlab.filters.store", "STORE_DTYPES")
    assert _training_precisions() == _choices("poisonlab.flows.cli.train", "PRECISIONS")


def test_a_registry_choice_lists_what_is_registered() -> None:
    from poisonlab.attacks.components import ATTACKS
    from poisonlab.federated.schemes import SCHEMES

    assert f"<{'|'.join(SCHEMES.loaded_names())}>" in _help(("federate", "partition"), columns=200)
    # attacks are many: their names are listed in the help text, which wraps, rather than in the metavar.
    # The help is built when the command line is imported, before any plugin (the graph adapter's attacks)
    # is, so it lists the core package's attacks whatever other tests imported first
    core = [c.name for c in ATTACKS if c.factory.__module__.startswith("poisonlab.attacks.")]
    assert f"attack: {', '.join(core)}" in " ".join(_help(("poison",), columns=80).split())


def _open_clip_train_options() -> set[str]:
    from open_clip_train.params import parse_args

    return {"--" + name.replace("_", "-") for name in vars(parse_args([]))}


def _img2dataset_options() -> set[str]:
    """img2dataset's ``download`` arguments (its command line, through fire), read without importing it."""
    origin = importlib.util.find_spec("img2dataset").origin  # type: ignore[union-attr]
    tree = ast.parse((Path(origin).parent / "main.py").read_text())
    download = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "download")
    return {f"--{a.arg}" for a in download.args.args} | {f"--{a.arg.replace('_', '-')}" for a in download.args.args}


ALIASES = [  # (command, our option, the other tool's spelling): same meaning, same parameter
    (("train",), "--weight-decay", "--wd"),
    (("train",), "--warmup-steps", "--warmup"),
    (("train",), "--data-workers", "--workers"),
    (("train",), "--model", "--arch"),
    (("embed",), "--arch", "--model"),
    (("embed",), "--weights", "--pretrained"),
    (("evaluate",), "--arch", "--model"),
    (("evaluate",), "--weights", "--pretrained"),
    (("model-dir",), "--weights", "--pretrained"),
    (("sanitize",), "--weights", "--pretrained"),
    (("ingest",), "--urls", "--url-list"),
    (("ingest",), "--urls", "--url_list"),
    (("ingest",), "--out", "--output-folder"),
    (("ingest",), "--out", "--output_folder"),
    (("ingest",), "--processes", "--processes-count"),
    (("ingest",), "--threads", "--thread-count"),
    (("ingest",), "--samples-per-shard", "--number-sample-per-shard"),
    (("ingest",), "--url-col", "--url_col"),
    (("ingest",), "--caption-col", "--caption_col"),
]
THEIRS = {"--model", "--pretrained", "--wd", "--warmup", "--workers"}


@pytest.mark.parametrize(("path", "ours", "alias"), ALIASES, ids=[f"{' '.join(p)} {a}" for p, _, a in ALIASES])
def test_the_other_tools_spelling_is_an_alias(path: tuple[str, ...], ours: str, alias: str) -> None:
    assert _param(path, ours) is _param(path, alias)
    if path[0] == "ingest":
        assert alias in _img2dataset_options()
    elif alias in THEIRS:
        assert alias in _open_clip_train_options()


def test_sanitize_writes_excluded_samples_as_clean_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One name for the excluded output: ``--excluded-out DIR`` on clean and sanitize; sanitize's old
    ``--keep-excluded`` (hidden) still means ``--excluded-out OUT/excluded``."""
    shards = make_synth(tmp_path / "shards", samples=60, per_shard=30)
    args = ["sanitize", "--in", str(shards), "--arch", "poisonlab-tiny-32", "--detector", "knn=kdist:k=4",
            "--detector", "dao:k=4", "--detector", "both=ensemble:detectors=[knn;dao],method=rank_max",  # as README
            "--decision", "top_fraction:detector=both,fraction=0.1", "--executor", "local", "--json"]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--excluded-out", str(tmp_path / "excluded")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["clean"]["excluded"] == 6
    assert sorted(p.name for p in (tmp_path / "excluded").glob("*.tar")) == ["00000.tar", "00001.tar"]
    one_line_error(runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--keep-excluded", "--excluded-out",
                                       str(tmp_path / "x")]), "--keep-excluded", "--excluded-out")
    assert "--keep-excluded" not in _help(("sanitize",))

    import poisonlab.flows.sanitize

    given: dict[str, Any] = {}
    monkeypatch.setattr(poisonlab.flows.sanitize, "sanitize", lambda *a, **kw: given.update(kw) or _no_result())
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--keep-excluded"]).exit_code == 0
    assert given["excluded_out"] == tmp_path / "b" / "excluded"


def _no_result() -> dict[str, Any]:
    clean = {"excluded": 0, "live": 0, "out": "", "exclusions": "", "by_rule": {}}
    return {"embed": {"store": ""}, "scan": {"out": ""}, "clean": clean}


def test_an_ingest_that_wrote_nothing_fails_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``import``: every URL failed, so the command fails instead of leaving an empty dataset behind.
    (The download itself is tested in test_ingest_download; here, what the command makes of its result.)"""
    import poisonlab.flows.cli.ingest as command

    result = {"samples": 2, "written": 0, "shards": ["00000"], "by_status": {"error": 2},
              "reasons": {"ingest: unsupported_url_scheme": 1, "download: HTTP Error 404": 1}}
    monkeypatch.setattr(command, "ingest", lambda spec, runner: result)
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nfile:///etc/passwd,a local file\nhttp://127.0.0.1:9/x.jpg,gone\n")
    res = CliRunner().invoke(app, ["ingest", "--urls", str(urls), "--out", str(tmp_path / "out"), "--json"])
    one_line_error(res, "ingest wrote 0 of 2 rows", "1 unsupported_url_scheme", "1 HTTP Error 404", "--timeout")
