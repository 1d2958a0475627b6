"""Components contributed by the filters layer (loaded through the ``poisonlab.components`` entry point):
the embedders, the detectors, the decisions and the ``exclude_keys`` stage."""

from poisonlab.filters import clean, decisions, detectors, open_clip_embedder  # noqa: F401  (registering is importing)
