"""Federated commands: ``federate partition`` (clients as keyed partitions of a shard folder).

A sub-app, as ``splitview`` is: rounds and client inspection will join ``partition`` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from poisonlab.federated.partition import PartitionRecord, make_partition
from poisonlab.federated.schemes import SCHEMES, PartitionError
from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import JsonOpt, emit, fail, sub_app
from poisonlab.flows.cli.errors import describe
from poisonlab.pipelines.registry import RegistryError

federate_app = sub_app("federate", "Federated learning over shared shards: clients as keyed partitions.")


def scheme_params(scheme: str, given: dict[str, Any]) -> dict[str, Any]:
    """The options the user set, as the scheme's parameters; an option the scheme does not take is an error
    (asked of its parameter model, never of its name)."""
    known = SCHEMES.get(scheme).params.model_fields
    for name, value in given.items():
        if value is not None and name not in known:
            fail(f"--{name.replace('_', '-')} does not apply to --scheme {scheme} (it takes: "
                 f"{', '.join('--' + k.replace('_', '-') for k in known) or 'no options'})")
    return {name: value for name, value in given.items() if value is not None}


def _summary(record: PartitionRecord, out: Path) -> str:
    counts = record.counts
    return (f"{record.samples} samples of {len(record.shards)} shards to {record.clients} clients ({record.scheme}, "
            f"seed {record.seed}): {min(counts)}..{max(counts)} per client -> {out}")


@federate_app.command("partition")
def partition_command(
    src: Path = typer.Option(..., "--in", help="shard folder to partition (it is only read)"),
    clients: int = typer.Option(..., "--clients", min=1, help="number of clients"),
    scheme: str = typer.Option("iid", "--scheme", metavar=f"<{'|'.join(SCHEMES.loaded_names())}>",
                               help="partition scheme (with plugins: `poisonlab components partition_scheme`)"),
    alpha: float | None = typer.Option(None, "--alpha", help="dirichlet: concentration (small = more skew)"),
    label_column: str | None = typer.Option(None, "--label-column", help="dirichlet: sidecar column of the class"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(..., "--out", help="folder for partition.parquet and partition.json"),
    as_json: bool = JsonOpt,
) -> None:
    """Assign every live sample of a shard folder to one of N clients (a table: no data is copied)."""
    outputs.guard(out, "partition", src)
    try:
        params = scheme_params(scheme, {"alpha": alpha, "label_column": label_column})
        record = make_partition(src, out, clients, scheme, params, seed)
    except (PartitionError, RegistryError, ValueError) as exc:
        fail(describe(exc))  # one line, also for pydantic's multi-line messages
    outputs.done(out, "partition")
    emit(record.to_dict(), as_json, _summary(record, out))
