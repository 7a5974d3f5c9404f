"""``python -m buildfarm.local.serve --host H --port P``: the local farm's API process.

It serves what ``python -m buildfarm.api`` serves, the API on the network for tokens, and beside
it, in the same event loop and over the same farm context, the owner socket
(:mod:`buildfarm.local.owner`): the in-process application of the CLI
(:meth:`buildfarm.local.inprocess.LocalFarm.owner_app`) for the farm's own user, so that a local
command costs a request, not an import of the server stack.  A connection from any other uid
is closed unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from buildfarm.api.__main__ import QUIET, address_arguments, network_config, warm_up
from buildfarm.api.app import create_app
from buildfarm.dispatch.context import make_context
from buildfarm.engine.context import FarmContext
from buildfarm.local import owner
from buildfarm.local.inprocess import LocalFarm
from buildfarm.model.settings import settings_at_start

log = logging.getLogger(__name__)


class OwnerOnly(AutoHTTPProtocol):  # type: ignore[misc,valid-type]  # uvicorn picks h11 or httptools
    """uvicorn's HTTP protocol that hangs up on a peer of another uid before reading a byte."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is None or not owner.is_owner(sock):
            log.warning("owner socket: refused a connection from uid %s", _uid(sock))
            transport.close()


def _uid(sock: socket.socket | None) -> int | None:
    return None if sock is None else owner.peer_uid(sock)


class Network(uvicorn.Server):
    """The API on the network, whose shutdown ends only once the owner side's has: when it caught
    SIGTERM, uvicorn raises that signal again as soon as this server's ``serve`` returns, which
    ends the process, and the owner socket's file must be gone by then."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.owner_closed = asyncio.Event()
        self.owner_closed.set()  # nothing beside it until :func:`serve` starts the owner side

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        await self.owner_closed.wait()


class Beside(uvicorn.Server):
    """A server that runs beside ``main`` in its event loop: it leaves the signals to ``main``
    and stops when ``main`` does."""

    def __init__(self, config: uvicorn.Config, main: uvicorn.Server) -> None:
        super().__init__(config)
        self.main = main

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def on_tick(self, counter: int) -> bool:
        return self.main.should_exit or await super().on_tick(counter)


WARM_PATH = "/-/warm-up/no-such-route"
"""A path no route has: asking it makes FastAPI build every route's request handling."""


async def warm_up_routes(app: Any) -> None:
    """Ask the API for a path no route has, before serving: FastAPI builds each route's request
    and response models on the first request that reaches it, and a 404 reaches them all.  The
    first submit to a freshly started farm paid that (~150 ms of CPU) while the farm builds."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    response = await transport.handle_async_request(httpx.Request("GET", f"http://localhost{WARM_PATH}"))
    await response.aclose()


async def serve(
    main: Network, beside: uvicorn.Server, sock: socket.socket, path: Path, ctx: FarmContext
) -> None:
    """Both servers until ``main`` is told to stop (uvicorn then raises its signal again)."""
    for app in (main.config.app, beside.config.app):  # the owner socket's is the CLI's
        await warm_up_routes(app)
    warm_up(ctx)
    main.owner_closed.clear()

    async def owner_side() -> None:
        try:
            await beside.serve(sockets=[sock])
        finally:
            path.unlink(missing_ok=True)  # a command from now on calls the API in-process
            main.owner_closed.set()

    await asyncio.gather(main.serve(), owner_side())


def main(argv: list[str] | None = None) -> None:
    args = address_arguments("python -m buildfarm.local.serve", argv)
    settings = settings_at_start()
    ctx = make_context(settings)
    network = Network(network_config(create_app(settings, ctx), args, settings))
    path = owner.socket_path(settings.state_dir)
    if path is None:
        log.warning("no owner socket: the state directory's path is too long for one")
        network.run()
        return
    local = LocalFarm(settings, ctx)
    beside = Beside(uvicorn.Config(local.owner_app(), http=OwnerOnly, lifespan="off", **QUIET), network)
    sock = owner.listen(path)
    try:
        with asyncio.Runner(loop_factory=network.config.get_loop_factory()) as runner:
            runner.run(serve(network, beside, sock, path, ctx))
    finally:
        sock.close()
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
