"""The core of poisonlab: samples, stages, the component registry, keyed randomness and accounting.

This layer knows nothing about images, Prefect, Dask or torch, so that graph and federated adapters
can carry other payloads through the same stages.
"""

from poisonlab.pipelines.accounting import ShardStats, StageCounts
from poisonlab.pipelines.keyed import keyed_rng, keyed_uniform, keyed_u64
from poisonlab.pipelines.registry import Registry, get_registry, list_registries, load_plugins
from poisonlab.pipelines.sample import LIVE_STATUSES, Sample, Status
from poisonlab.pipelines.stage import BatchMapStage, FilterStage, MapStage, Needs, Stage

__all__ = [
    "BatchMapStage",
    "FilterStage",
    "LIVE_STATUSES",
    "MapStage",
    "Needs",
    "Registry",
    "Sample",
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
]
