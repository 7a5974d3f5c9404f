"""A directory served over plain HTTP on 127.0.0.1 by a thread: an upstream's files, a small
archive, a published repository read from outside the farm's own server.

The farm refuses loopback URLs unless its settings allow them (``fetch_allow_hosts``): a test
serving its upstreams here allows ``127.0.0.1``, as an admin's allow-list would.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STOP_SECONDS = 10.0
"""How long ``stop`` waits for the serving thread to end."""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


class Served:
    """A directory served over HTTP on a free port, stoppable mid-test."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=STOP_SECONDS)


@contextmanager
def serving(directory: Path) -> Iterator[Served]:
    """``directory`` served until the block ends."""
    server = Served(directory)
    try:
        yield server
    finally:
        server.stop()
