"""Orchestration: Prefect flows on Dask, and the ``poisonlab`` command line. The only layer that imports them."""

import os

# Set before any flow module imports Prefect (it reads settings at import). Its ephemeral API server starts
# in ~15 s on an idle 2-core machine but can take minutes on a busy one, and the default 20 s limit made
# flows fail there. A user's own environment still wins.
for _name, _value in {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)
