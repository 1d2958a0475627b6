"""Federated commands: ``federate partition`` (clients as keyed partitions of a shard folder).

A sub-app, as ``splitview`` is: rounds and client inspection will join ``partition`` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from poisonlab.attacks.recipe import RecipeError
from poisonlab.federated.partition import PartitionRecord, make_partition
from poisonlab.federated.recipe import FederatedRecipeError, load_federated_recipe, parse_overrides
from poisonlab.federated.schemes import SCHEMES, PartitionError
from poisonlab.flows.cli import outputs
from poisonlab.flows.cli.app import JsonOpt, RunOptions, emit, fail, sub_app, with_run_options
from poisonlab.flows.cli.errors import describe
from poisonlab.flows.cli.paths import absolute
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


def _show_round(label: str, row: dict[str, Any]) -> None:
    typer.echo(f"{label} round {row['round']}: zero-shot {row.get('zero_shot')}, ASR {row.get('asr')}, "
               f"excluded {row['excluded']}", err=True)


def _train_summary(result: dict[str, Any]) -> str:
    lines = [f"federated run -> {result['out']} (report {result['report']})"]
    for line in result["aggregators"]:
        auroc = ", ".join(f"{k} {v:.3f}" for k, v in line["detection_auroc"].items() if v is not None)
        lines.append(f"  {line['aggregator']}: zero-shot {line['final_zero_shot']}, ASR {line['final_asr']}, "
                     f"rounds until ASR > 0.5: {line['rounds_until_asr_above_0.5']}"
                     + (f", detection AUROC {auroc}" if auroc else ""))
    return "\n".join(lines)


@federate_app.command("train")
@with_run_options
def train_command(
    recipe: Path = typer.Argument(..., help="federated recipe YAML (see recipes/federated_*.yaml)"),
    out: Path = typer.Option(..., "--out", help="experiment folder (a rerun resumes at the last finished round)"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe value, e.g. --set rounds=3"),
    options: RunOptions = RunOptions(),
) -> None:
    """Rounds of local training on the clients' partitions, aggregated per registered aggregator, evaluated per round."""
    from poisonlab.flows.federate import run_federated

    outputs.guard(out, "federated")
    try:
        loaded = load_federated_recipe(recipe, parse_overrides(overrides))
    except FederatedRecipeError as exc:
        fail(str(exc))
    out = absolute(out)
    loud = not options.runner.quiet and not options.as_json
    try:
        result = run_federated(loaded, out, options.runner, absolute(recipe).parent,
                               on_round=_show_round if loud else lambda label, row: None)
    except (FederatedRecipeError, PartitionError, RecipeError, RegistryError, ValueError) as exc:
        fail(describe(exc))
    outputs.done(out, "federated")
    options.emit(result, _train_summary(result))


@federate_app.command("poison")
@with_run_options
def poison_command(
    src: Path = typer.Option(..., "--in", help="clean shard folder the partition was made from"),
    partition: Path = typer.Option(..., "--partition", help="partition folder (federate partition --out)"),
    malicious: str = typer.Option(..., "--malicious", help="malicious clients, comma-separated (e.g. 0,1)"),
    dst: Path = typer.Option(..., "--out", help="poisoned copy (the same keys: the partition serves it)"),
    attack: str | None = typer.Option(None, "--attack", help="attack name (`poisonlab components attack`)"),
    rate: float | None = typer.Option(None, "--rate", help="fraction of EACH malicious client's partition"),
    count: int | None = typer.Option(None, "--count", help="exact samples poisoned in EACH malicious partition"),
    target: str | None = typer.Option(None, "--target", help='target class, e.g. "red circle"'),
    seed: int | None = typer.Option(None, "--seed"),
    param: list[str] = typer.Option([], "--param", help="attack parameter NAME=VALUE; repeatable"),
    recipe: Path | None = typer.Option(None, "--recipe", help="YAML attack recipe instead of --attack ..."),
    options: RunOptions = RunOptions(),
) -> None:
    """Poison only the malicious clients' partitions (exact --count/--rate within each); the manifest names the client."""
    from poisonlab.federated.poisoning import prepare_client_poisoning
    from poisonlab.flows.cli.poison import INPUT_ERRORS, _recipe, _summary
    from poisonlab.flows.runtime import run_job

    src, partition, dst = absolute(src), absolute(partition), absolute(dst)
    outputs.guard(dst, "poisoned", src, partition)
    try:
        clients = [int(c) for c in malicious.split(",") if c.strip()]
        loaded, base_dir = _recipe(recipe, attack, target, rate, count, seed, param)
        job = prepare_client_poisoning(src, dst, partition, clients, loaded, base_dir)
    except (*INPUT_ERRORS, PartitionError) as exc:
        fail(describe(exc))
    outputs.done(dst, "poisoned")
    result = run_job(job, options.runner, "poison")
    options.emit(result, _summary(result) + f"\n  per malicious client: {result['poisoned_per_client']}")
