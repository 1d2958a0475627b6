"""Components contributed by the training layer (loaded through the ``poisonlab.components`` entry point)."""

from __future__ import annotations

import poisonlab.training.clip_objective  # noqa: F401  (registers the "clip" objective)
