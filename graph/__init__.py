"""The graph adapter: a graph–text CLIP (GIN encoder + open_clip text tower), its batch codec, objective,
embedder and evaluation. It reuses the loop, the run folder, the embedding store and the detectors; only
what is graph-specific lives here."""
