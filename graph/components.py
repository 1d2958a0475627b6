"""Components contributed by the graph adapter (loaded through the ``poisonlab.components`` entry point)."""

from __future__ import annotations

import poisonlab.graph.embedder  # noqa: F401  (registers the "graph_clip" embedder)
import poisonlab.graph.evaluation  # noqa: F401  (registers the "graph_clip" run evaluator)
import poisonlab.graph.graphcl  # noqa: F401  (registers the "graphcl" objective)
import poisonlab.graph.objective  # noqa: F401  (registers the "graph_clip" objective)
import poisonlab.graph.optimised_trigger  # noqa: F401  (registers the "optimised_graph_trigger" attack)
