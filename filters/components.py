"""Components contributed by the filters layer (loaded through the ``poisonlab.components`` entry point):
the embedders, the detectors, the decisions and the ``exclude_keys`` stage."""

from poisonlab.filters import (  # noqa: F401  (registering is importing)
    clean,
    decisions,
    default,
    detectors,
    open_clip_embedder,
    phrases,
    subsets,
)
