"""The ``poisonlab`` command line: one subcommand per kind of work.

Each module in ``COMMAND_MODULES`` adds its commands to ``app`` when imported.
"""

from __future__ import annotations

from importlib import import_module

from poisonlab.flows import lifecycle
from poisonlab.flows.cli.app import app

COMMAND_MODULES = (
    "poisonlab.flows.cli.data",
    "poisonlab.flows.cli.demo",
    "poisonlab.flows.cli.federate",
    "poisonlab.flows.cli.ingest",
    "poisonlab.flows.cli.models",
    "poisonlab.flows.cli.poison",
    "poisonlab.flows.cli.sanitize",
    "poisonlab.flows.cli.train",
)


def main() -> None:
    lifecycle.install()  # Prefect's temporary server and Dask workers never outlive the command
    for name in COMMAND_MODULES:
        import_module(name)
    app()


__all__ = ["app", "main"]
