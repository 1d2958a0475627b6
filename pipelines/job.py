"""The job protocol: plan tasks, run one shard each, finalise from the results.

Every command that processes shards (ingest, import, synth, poison, embed, clean, ...) is a ``ShardJob``:
``tasks()`` plans one ``ShardTask`` per shard (validation errors raise here, before any work), any runner
executes them in any order, and ``finalize(results)`` receives the ``ShardResult`` of every task in task
order and writes the dataset-level files (``sizes.json``, manifests, records) and returns a summary.
Runners differ only in where ``run_shard_task`` runs, so a job's bytes never depend on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from poisonlab.pipelines.accounting import ShardResult
from poisonlab.pipelines.executor import ShardTask, run_local_results


@runtime_checkable
class ShardJob(Protocol):
    """A planned piece of work over shards."""

    def tasks(self) -> list[ShardTask]:
        """One task per shard; each carries only its own part of the plan."""
        ...

    def finalize(self, results: Sequence[ShardResult]) -> dict[str, Any]:
        """Write what depends on every shard and summarise (results come in task order)."""
        ...


JobRunner = Callable[[ShardJob], dict[str, Any]]


def run_job_local(job: ShardJob) -> dict[str, Any]:
    """Run a job's tasks in this process and finalise it (tests, notebooks, small inputs)."""
    return job.finalize(run_local_results(job.tasks()))
