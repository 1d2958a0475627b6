"""The federated adapter: clients as keyed partitions of shared shards, registered aggregation rules and
malicious-client helpers, reusing the shard reader and ``training.local_update`` (nothing of its own trains).
Import from the modules (``.partition``, ``.client_data``, ``.aggregators``, ``.malicious``): the package
imports nothing itself, so commands start without torch.

    make_partition("shards/", "part/", clients=10, scheme="dirichlet", params={"alpha": 0.5}, seed=0)
    state, stats = local_update(global_state, client_shard_set("shards/", "part/", client=3), settings, steps=20)
    result = get_registry("aggregator").create("flame").aggregate(updates, round_=0)
"""
