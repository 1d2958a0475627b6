"""One Prefect API server per run: the user's (``PREFECT_API_URL``) or one temporary server for the process.

Without an API URL, Prefect starts a temporary server (a uvicorn process, 10-20 s on a busy machine) in
every process that needs a client: the driver, and then each Dask worker process that runs a task, once per
cluster. Starting the driver's server here and putting its URL in the settings context that Prefect hands to
every task (``serialize_context``) makes the workers use it too, and every flow of the command reuses it
(``SubprocessASGIServer`` is one instance per process, stopped at exit; the watchdog covers a kill).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

_ANNOUNCED: set[str] = set()
_TEMPORARY: set[str] = set()
"""The URLs of the temporary servers this process started (a flow nested in another runs inside its settings)."""


def persistent_api_url() -> str | None:
    """The API URL of a server that outlives this run (set by the user or a profile), if any."""
    url = PREFECT_API_URL.value() or None
    return None if url in _TEMPORARY else url


def announce(what: str, link: str | None) -> None:
    """Print a link once per process (on stderr, beside the progress bars)."""
    if link and link not in _ANNOUNCED:
        _ANNOUNCED.add(link)
        sys.stderr.write(f"{what}: {link}\n")


@contextlib.contextmanager
def api_server(quiet: bool = False) -> Iterator[str]:
    """Run the block against one API server; a persistent server's UI link is printed unless ``quiet``."""
    url = PREFECT_API_URL.value() or None
    if url:
        if not quiet and url == persistent_api_url():
            announce("Prefect UI", PREFECT_UI_URL.value() or url)
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    _TEMPORARY.add(server.api_url)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server.api_url
