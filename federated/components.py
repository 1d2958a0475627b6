"""Components contributed by the federated adapter (loaded through the ``poisonlab.components`` entry point):
partition schemes and aggregators."""

from __future__ import annotations

import poisonlab.federated.aggregators  # noqa: F401  (registers the "aggregator" kind)
import poisonlab.federated.schemes  # noqa: F401  (registers the "partition_scheme" kind)
