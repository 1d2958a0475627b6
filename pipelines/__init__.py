"""The core of poisonlab: samples, stages, the component registry, keyed randomness, accounting
and the job protocol.

This layer knows nothing about images, Prefect, Dask or torch, so that graph and federated adapters
can carry other payloads through the same stages.
"""

from poisonlab.pipelines.accounting import ShardResult, ShardStats, StageCounts, reason_category, shard_totals
from poisonlab.pipelines.job import JobRunner, ShardJob, run_job_local
from poisonlab.pipelines.keyed import keyed_rng, keyed_u64, keyed_uniform
from poisonlab.pipelines.registry import (
    Params,
    Registry,
    RegistryError,
    get_registry,
    list_registries,
    load_plugins,
)
from poisonlab.pipelines.sample import LIVE_STATUSES, Sample, Status
from poisonlab.pipelines.stage import (
    AccountingError,
    BatchMapStage,
    FilterStage,
    MapStage,
    Needs,
    ShardContext,
    Stage,
)

__all__ = [
    "AccountingError",
    "BatchMapStage",
    "FilterStage",
    "LIVE_STATUSES",
    "MapStage",
    "Needs",
    "Params",
    "Registry",
    "RegistryError",
    "Sample",
    "JobRunner",
    "ShardContext",
    "ShardJob",
    "ShardResult",
    "ShardStats",
    "Stage",
    "StageCounts",
    "Status",
    "get_registry",
    "keyed_rng",
    "keyed_u64",
    "keyed_uniform",
    "list_registries",
    "load_plugins",
    "reason_category",
    "run_job_local",
    "shard_totals",
]
