"""Serve the local repository directory over HTTP, so apt and sbuild reach it as they reach any mirror.

The standard library's static file server is all the local profile needs. Three changes make it
fit: it never serves a file whose real path leaves the root (``latest`` and staging symlinks
inside the root still work), it ignores ``If-Modified-Since`` (a repository republished within
the same second would otherwise answer 304 and apt would keep the old ``Release``), and it logs
to a file or nowhere instead of one stderr line per request.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from pathlib import Path

log = logging.getLogger(__name__)


class RepositoryRequestHandler(SimpleHTTPRequestHandler):
    """Static files under ``directory``, confined to it even through symlinks."""

    def send_head(self) -> BufferedIOBase | None:  # type: ignore[override]
        root = os.path.realpath(self.directory)
        real = os.path.realpath(self.translate_path(self.path))
        if real != root and not real.startswith(root + os.sep):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        # Second-granular Last-Modified cannot tell two publishes in the same second apart.
        del self.headers["If-Modified-Since"]
        return super().send_head()  # type: ignore[return-value]

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


class RepositoryServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up mid-download is routine; don't print a traceback to stderr.
        log.debug("request from %s failed", client_address, exc_info=True)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0) -> RepositoryServer:
    """A bound, not yet serving server for ``root`` (port 0 picks a free port: see ``server_port``)."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    handler = partial(RepositoryRequestHandler, directory=str(root))
    return RepositoryServer((host, port), handler)


def serve(root: Path, host: str, port: int) -> None:
    """Serve ``root`` until interrupted."""
    with make_server(root, host, port) as server:
        log.info("serving %s on http://%s:%s/", root, host, server.server_port)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal way to stop it
            server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildfarm.backends.httpserve", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="directory to serve (the repository root)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--access-log", type=Path, help="append one line per request to this file")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening (--port 0)")
    options = parser.parse_args(argv)
    if options.access_log is not None:
        handler = logging.FileHandler(options.access_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if options.root.exists() and not options.root.is_dir():
        print(f"httpserve: --root {options.root} is not a directory", file=sys.stderr)
        return 2
    try:
        server = make_server(options.root, options.host, options.port)
    except OSError as exc:
        print(f"httpserve: cannot serve on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    with server:
        if options.port_file is not None:
            # Written whole then renamed: a reader polling for the file never sees a partial number.
            tmp = options.port_file.with_name(options.port_file.name + ".tmp")
            tmp.write_text(f"{server.server_port}\n")
            os.replace(tmp, options.port_file)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
