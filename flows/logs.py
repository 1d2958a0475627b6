"""How loud Dask and Prefect are: their INFO logs only on request (``--verbose``), only errors with ``--quiet``.

Left alone, a flow prints Prefect's run logs and every ``distributed.*`` INFO line (scheduler, nannies,
connections) through Prefect's console handler, in a second log format beside the progress bars. The
levels are set on the loggers of this process, and through the environment for the processes started
after it (Dask workers read ``DASK_LOGGING__DISTRIBUTED`` and Prefect ``PREFECT_LOGGING_LEVEL`` when they
import them). A level the user set in the environment is kept unless ``--verbose`` asks for more.
"""

from __future__ import annotations

import logging
import os
import warnings

QUIET_LOGGERS = ("distributed", "tornado", "bokeh")
"""Dask's loggers: their warnings (an event loop unresponsive for a second on a busy machine, a port in use)
are noise to a user; only their errors are shown unless ``--verbose``."""


_USER_ENVIRONMENT = {name: os.environ.get(name) for name in ("PREFECT_LOGGING_LEVEL", "DASK_LOGGING__DISTRIBUTED")}


def levels(verbose: bool, quiet: bool) -> tuple[str, str]:
    """(Prefect's level, Dask's level) for the flags: INFO with ``verbose``, ERROR with ``quiet``."""
    if verbose:
        return "INFO", "INFO"
    if quiet:
        return "ERROR", "ERROR"
    return "WARNING", "ERROR"


def configure(verbose: bool = False, quiet: bool = False) -> None:
    """Set Prefect's and Dask's log levels here and for the worker processes started from now on."""
    prefect_level, dask_level = levels(verbose, quiet)
    environment = {"PREFECT_LOGGING_LEVEL": prefect_level, "DASK_LOGGING__DISTRIBUTED": dask_level.lower()}
    for name, value in environment.items():
        user = _USER_ENVIRONMENT.get(name)
        os.environ[name] = value if verbose or not user else user
    logging.getLogger("prefect").setLevel(os.environ["PREFECT_LOGGING_LEVEL"].upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(os.environ["DASK_LOGGING__DISTRIBUTED"].upper())
    if quiet:
        warnings.filterwarnings("ignore", module=r"(distributed|prefect|prefect_dask|tornado)(\.|$)")
