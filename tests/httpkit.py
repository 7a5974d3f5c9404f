"""Plain HTTP on 127.0.0.1 served by a thread: a directory (an upstream's files, a small archive,
a published repository read from outside the farm's own server), or an upstream that redirects
every request (where a redirect may lead is the farm's to check); and the farm's own repository
server (:mod:`buildfarm.backends.httpserve`) over a repositories directory.

The farm refuses loopback URLs unless its settings allow them (``fetch_allow_hosts``): a test
serving its upstreams here allows ``127.0.0.1``, as an admin's allow-list would.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from buildfarm.backends.httpserve import RepositoryServer, make_server

STOP_SECONDS = 10.0
"""How long ``stop`` waits for the serving thread to end."""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


class _Server:
    """A handler served on a free port of 127.0.0.1 by a thread, stoppable mid-test."""

    def __init__(self, handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=STOP_SECONDS)


class Served(_Server):
    """A directory served over HTTP."""

    def __init__(self, directory: Path) -> None:
        super().__init__(functools.partial(_QuietHandler, directory=str(directory)))


class Redirecting(_Server):
    """Answers every GET with a redirect to ``target`` + its path (404 while ``target`` is
    empty), and records the paths asked in ``seen``."""

    def __init__(self) -> None:
        self.target = ""
        self.seen: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append(self.path)
                self.send_response(302 if owner.target else 404)
                if owner.target:
                    self.send_header("Location", owner.target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        super().__init__(Handler)


@contextmanager
def serving(directory: Path) -> Iterator[Served]:
    """``directory`` served until the block ends."""
    server = Served(directory)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def redirecting() -> Iterator[Redirecting]:
    """A redirecting upstream until the block ends."""
    server = Redirecting()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serving_repos(root: Path, port: int = 0) -> Iterator[RepositoryServer]:
    """``root`` served by the farm's own repository server on 127.0.0.1 (``port`` 0: a free one,
    see ``server_port``) until the block ends."""
    server = make_server(root, "127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_SECONDS)
