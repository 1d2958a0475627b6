"""A small threaded HTTP server on 127.0.0.1 that serves in-memory responses by path.

Ingest is tested, benchmarked and attacked (the split-view testbed) against real HTTP without touching
the network: the server binds the loopback address only, on a port the OS picks, and answers from a
resolver (a path -> ``Response`` callable), so a test can serve images next to every failure a crawler
meets (404s, slow hosts, redirects, bodies that are not images).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Response:
    """What the server answers for one path. ``delay_s`` holds the answer back (a slow or dead host);
    ``declared_length`` announces more bytes than the body has (a transfer cut short)."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    declared_length: int | None = None


NOT_FOUND = Response(body=b"not found", status=404, content_type="text/plain")

Resolver = Callable[[str], "Response | None"]


def redirect(location: str, status: int = 302) -> Response:
    return Response(status=status, headers=(("Location", location),), content_type="text/plain")


def routes(table: Mapping[str, Response]) -> Resolver:
    """A resolver from a fixed path -> response table."""
    return table.get


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        response = self.server.resolver(path) or NOT_FOUND
        if response.delay_s > 0 and self.server.stopping.wait(response.delay_s):
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(response.declared_length or len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        if response.declared_length is not None:
            self.close_connection = True
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep tests and benchmarks quiet
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.stopping = threading.Event()
        super().__init__((LOOPBACK, 0), _Handler)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """Clients that time out and hang up are expected here; a traceback per hang-up is noise."""


class LoopbackServer:
    """Serve ``resolver`` on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, resolver: Resolver) -> None:
        self._server = _Server(resolver)
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connections to it are refused."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
