"""The federated adapter: clients as keyed partitions of shared shards, trained by ``training.local_update``.

Import from the modules: the package imports nothing itself, so commands start without torch.

- ``partition``, ``schemes``, ``rows``: keyed partitions of a shard folder; ``client_data``: a client's stream;
- ``poisoning`` (+ ``lineage``): an attack within the malicious clients' partitions only;
- ``malicious``: model replacement (boost, constrain-and-scale);
- ``recipe``: the federated recipe; ``rounds``, ``client_task``, ``store``, ``reuse``: rounds as jobs (client
  tasks, server step), their files, one model per worker process;
- ``aggregators``: registered rules; ``inspection``, ``probe``: client scores and the clean probe set;
- ``round_eval``, ``experiment``, ``report``: per-round evaluation, a recipe end to end, the comparison.

    make_partition("shards/", "part/", clients=10, scheme="dirichlet", params={"alpha": 0.5}, seed=0)
    state, stats = local_update(global_state, client_shard_set("shards/", "part/", client=3), settings, steps=20)
    result = get_registry("aggregator").create("flame").aggregate(updates, round_=0)
"""
