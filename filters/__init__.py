"""Sanitize: embed shards with a registered embedder, score every sample with detectors, decide, clean.

The steps, each usable alone (``poisonlab.flows.sanitize`` runs them as Prefect flows on Dask):

* ``embed.plan_embed_tasks`` / ``pipeline.embed_shards``: per-shard embeddings in a store, once per
  embedder configuration, one array per named space (``embedders``: the protocol and the registry;
  ``open_clip_embedder``: the default);
* ``scan.scan``: detectors over the whole dataset (one FAISS index), score tables per shard; under a
  memory budget the index is chosen to fit (``budget``) and split into index shards (``index_shard``,
  ``sharded_knn``, ``knn_merge``: pure; ``poisonlab.flows.knn_dask`` holds them on Dask workers);
* ``pipeline.clean_shards``: a decision over the score tables, cleaned shards and an exclusion table;
* ``metrics.recall_report``: detection quality against a poison manifest.

Importing this package does not import torch; ``poisonlab.filters.embed`` does.
"""
