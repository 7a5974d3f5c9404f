"""A TCP proxy a test can cut: the farm talks to a real server through it, the test plays outages.

``cut()`` resets every open connection and every new one (the client sees "connection reset",
as from a crashed server or a dropped route) until ``restore()``; ``cut(connections=n)`` comes
back by itself after refusing ``n`` connections, an outage shorter than a client's retry bound
measured in attempts rather than seconds, so a test of it does not depend on the machine's speed.
Unlike restarting the server behind it (moto loses its data on restart) the server keeps its
state. A stopped server (SIGSTOP) is the other kind of outage: connections hang until a timeout.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CONNECT_TIMEOUT = 5.0
"""Seconds to reach the server behind the proxy; it is on this machine and answers in microseconds."""
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends RST instead of FIN


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
    sock.close()


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``, one pair of pump threads per connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._refuse_left: int | None = None
        self._stopped = threading.Event()
        self.refused = 0
        """Connections reset because the proxy was cut (a client's retries show up here)."""
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name=f"tcpproxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        with self._lock:
            return self._cut

    def cut(self, connections: int | None = None) -> None:
        """Reset open connections and refuse new ones; after ``connections`` refusals, restore."""
        with self._lock:
            self._cut = True
            self._refuse_left = connections
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _reset(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False
            self._refuse_left = None

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._listener.close()
        self.cut()

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refuse = self._cut
                if refuse:
                    self.refused += 1
                    if self._refuse_left is not None:
                        self._refuse_left -= 1
                        if self._refuse_left <= 0:
                            self._cut, self._refuse_left = False, None
                else:
                    self.accepted += 1
            if refuse:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=CONNECT_TIMEOUT)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            done = threading.Semaphore(0)  # released by each direction as it ends
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, done), daemon=True).start()
            threading.Thread(target=self._close_when_done, args=(client, upstream, done), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, done: threading.Semaphore) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the half-close on, keep the other way open
        except OSError:  # a reset on either side resets both
            _reset(source)
            _reset(sink)
        finally:
            done.release()

    def _close_when_done(
        self, client: socket.socket, upstream: socket.socket, done: threading.Semaphore
    ) -> None:
        done.acquire()
        done.acquire()
        with self._lock:
            self._open.discard(client)
            self._open.discard(upstream)
        client.close()
        upstream.close()


@contextmanager
def tcp_proxy(target_host: str, target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port)
    try:
        yield proxy
    finally:
        proxy.close()
