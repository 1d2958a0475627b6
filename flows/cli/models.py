"""Model commands: ``model-dir`` (a poisonlab model as an open_clip ``local-dir:`` folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import JsonOpt, app, emit, fail


@app.command("model-dir")
def model_dir(
    arch: str = typer.Argument(..., help="architecture: a shipped config (poisonlab-tiny-32), an open_clip name, "
                               "a JSON config or local-dir:DIR"),
    out: Path = typer.Option(..., "--out", help="folder to write (open_clip_config.json [+ weights])"),
    weights: str | None = typer.Option(None, "--weights", "--pretrained", help="also write these weights (checked): a .safetensors "
                                       "or weights-only .pt file (open_clip_train's epoch_N.pt), a run folder or a "
                                       "pretrained tag"),
    as_json: bool = JsonOpt,
) -> None:
    """Write an open_clip local-dir folder, so open_clip_train can use a poisonlab model:
    `python -m open_clip_train.main --model local-dir:OUT ...`. Every run folder already is one."""
    from poisonlab.models.zoo import CheckpointError, ModelSpec, export_model_dir

    outputs.guard(out, "model")
    try:
        written = export_model_dir(ModelSpec(arch=arch, weights=weights), out)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))
    outputs.done(out, "model")
    result = {"out": str(out), "files": [p.name for p in written], "open_clip_model": f"local-dir:{out}"}
    emit(result, as_json, f"wrote {', '.join(result['files'])} to {out}; open_clip: --model local-dir:{out}")
