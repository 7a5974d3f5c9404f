"""Small helpers shared by the test fixtures: free ports and bounded waiting.

Importable as ``helpers`` from any test: pytest puts ``tests/`` on ``sys.path`` when it loads
``tests/conftest.py`` (rootdir-relative "prepend" import mode, no ``__init__.py`` in ``tests/``).
So are the kit modules beside it (``*kit.py``): every shared helper lives there, because a test
module's own directory is on ``sys.path`` only once pytest has collected a module from it.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago.

    Another process may take it before the caller binds it; callers that start servers retry
    with a new port when the server reports the address in use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until it returns true, at most ``timeout`` seconds.

    Exceptions raised by the predicate count as "not yet". On timeout, raises ``TimeoutError``
    naming ``what`` was awaited and the last exception seen, if any.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return
            last_error = None
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def wait_for(read: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``read`` until it returns something other than None, and return that value.

    For state that keeps changing (a step that is running now may be finished a moment later):
    the caller acts on the one reading that satisfied the wait, never on a second one.
    """
    found: list[T] = []

    def seen() -> bool:
        value = read()
        if value is not None:
            found.append(value)
        return value is not None

    wait_until(seen, timeout, what, interval)
    return found[-1]


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, for error messages; empty if it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """The URL of a fresh database ``<prefix>_<random>`` on ``server_url``'s PostgreSQL server,
    dropped afterwards (connections still open are cut)."""
    server = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
