"""Orchestration: Prefect flows on Dask, and the ``poisonlab`` command line. The only layer that imports them."""
