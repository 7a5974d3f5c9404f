"""The local farm's REST API as its owner's: what the CLI talks to when no farm URL is set.

The CLI reaches this machine's farm the way it reaches any other, through
:class:`buildfarm_client.Client` and the API's own routes (:func:`buildfarm.api.app.assemble`):
over the owner socket of the farm's running API process (:mod:`buildfarm.local.owner`, served by
:mod:`buildfarm.local.serve` with :meth:`LocalFarm.owner_app`), else over an httpx transport that
calls the same application in the CLI's own process (a farm not started, its API process dead).
What is local is only what a local farm is:

- its wiring: the state directory's database and stores, the backends ``buildfarm.wiring``
  chose, the Celery dispatcher when the farm recorded a broker;
- its user: the login name, admin of their own farm (no token: whoever can read the state
  directory owns the farm);
- what a request needs (:meth:`LocalFarm.require`, checked before anything is opened): builds
  and repositories need a farm that was started, changing builds needs its core processes,
  accounts, schedules and retention only the database (brought up to date, so an admin can
  make users and tokens before the farm ever started: the chart's install hook does);
- two answers only it gives: the status of the farm's processes (``/status``), and a submit
  that reads the manifest's trees from the checkout itself (``POST /local/builds``: StarlingX
  packages need its git history, ``--user`` names who asks).
"""

from __future__ import annotations

import getpass
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import anyio.from_thread
import httpx
from fastapi import APIRouter, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from buildfarm.accounts import Principal
from buildfarm.api.auth import Caller, authenticate
from buildfarm.api.errors import farm_error_response
from buildfarm.api.routes import API, assemble
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local import farm, owner
from buildfarm.model.errors import BuildfarmError, PermanentError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import Settings, load_settings
from buildfarm.retention import Progress
from buildfarm_client.models import BuildView, CheckoutSubmitIn, StatusOut

LOCAL_URL = owner.LOCAL_URL
FARM_ROUTES = ("/builds", "/local/builds", "/sources", "/repos")
"""Routes that need a farm that was started (and, to change anything, its core processes)."""
DATABASE_ROUTES = ("/admin", "/schedules", "/retention", "/storage")
"""Routes that need only the database, brought up to date first."""


class LocalFarm:
    """The farm in ``settings.state_dir`` as an API application, and the transport to call it."""

    def __init__(self, settings: Settings | None = None, ctx: FarmContext | None = None) -> None:
        """``ctx``: the context of the farm's API process, which serves this application on its
        owner socket (its database brought up to date by ``buildfarm start``)."""
        self.settings = settings or load_settings()
        self.principal = Principal(user=getpass.getuser(), admin=True)
        self.sweep_progress: Progress | None = None
        """Set by the CLI around a retention run: the in-process sweep reports to it."""
        self._ctx = ctx
        self._app: FastAPI | None = None
        self._schema_ready = ctx is not None

    @property
    def where(self) -> str:
        return owner.where(self.settings.state_dir)

    def require(self, method: str, path: str) -> None:
        """Refuse, before anything is opened, what this farm cannot answer now."""
        route = path.removeprefix(API)
        settings = self.settings
        if route.startswith(FARM_ROUTES):
            if not farm.was_started(settings):
                raise PermanentError(f"no local farm in {settings.state_dir}: run `buildfarm start`")
            if method != "GET" and not farm.core_alive(settings):
                raise PermanentError(
                    f"the local farm in {settings.state_dir} is stopped: run `buildfarm start`"
                )
        elif route.startswith(DATABASE_ROUTES):
            self.database()

    def context(self) -> FarmContext:
        """The farm's context: Celery when the farm recorded a broker, else no dispatcher."""
        if self._ctx is None:
            from buildfarm.dispatch.context import make_context

            # a farm stopped without a broker recorded: reading needs only the database and stores
            self._ctx = make_context(self.settings, None if self.settings.broker.url else _NoDispatcher())
        return self._ctx

    def database(self) -> FarmContext:
        """The context with its database schema brought up to date: no farm process needs to run."""
        if not self._schema_ready:
            from buildfarm.local.private import private_state_dir
            from buildfarm.state.db import upgrade

            if self.settings.database.url is None:
                private_state_dir(self.settings.state_dir)  # the SQLite file lives there, its owner's alone
            upgrade(self.settings.effective_database_url)
            self._schema_ready = True
        return self.context()

    def app(self) -> FastAPI:
        """The API's routes over this farm, as its user, plus the local-only ones."""
        if self._app is None:
            ctx = self.context()
            app = assemble(ctx, None, self._status, sweep_progress=lambda: self.sweep_progress)
            app.dependency_overrides[authenticate] = self._caller
            app.include_router(self._checkout_router(ctx), prefix=API)
            self._app = app
        return self._app

    def _caller(self, request: Request) -> Principal:
        """The farm's owner (admin), by the login name its CLI gives (:data:`owner.LOGIN_HEADER`:
        the CLI may run as another login of the same uid, or in the API process's stead)."""
        login = request.headers.get(owner.LOGIN_HEADER)
        return Principal(user=login, admin=True) if login else self.principal

    def owner_app(self) -> ASGIApp:
        """:meth:`app` as the API process serves it on the owner socket: each request first passes
        :meth:`require`, as the in-process transport checks it."""
        return _Required(self.app(), self)

    def transport(self) -> httpx.BaseTransport:
        return InProcessTransport(self)

    def _status(self, _principal: Principal) -> StatusOut:
        result = farm.status(self.settings)
        if result.running:
            result.running_steps = control.running_steps(self.context())
        return StatusOut.model_validate(asdict(result))

    def _checkout_router(self, ctx: FarmContext) -> APIRouter:
        router = APIRouter(tags=["local"])

        @router.post("/local/builds", response_model=BuildView, status_code=201)
        def submit_checkout(body: CheckoutSubmitIn, principal: Caller) -> BuildView:
            manifest_path = Path(body.manifest_path)
            manifest = load_manifest(manifest_path)
            user = body.user or principal.user
            build_id = submit_build(ctx, manifest, manifest_path.parent.resolve(), user)
            return control.show_build(ctx, build_id)

        return router

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.db.dispose()
            self._ctx = None
            self._app = None


class InProcessTransport(httpx.BaseTransport):
    """A sync httpx transport into the local farm's application.

    httpx's own ASGI transport is async only; this one runs it on an event loop in a thread of
    its own (anyio's blocking portal, started on the first request), so the sync client calls
    the application like a server would: routes, dependencies, error handlers, response models.
    """

    def __init__(self, local: LocalFarm) -> None:
        self.local = local
        self._stack = ExitStack()
        self._portal: anyio.from_thread.BlockingPortal | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.local.require(request.method, request.url.path)
        app = self.local.app()
        if self._portal is None:
            self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        return self._portal.call(_send, app, request)

    def close(self) -> None:
        self._stack.close()
        self._portal = None
        self.local.close()


async def _send(app: FastAPI, request: httpx.Request) -> httpx.Response:
    # An unexpected error is answered 500 by the API's handler, as over the network.
    asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    response = await asgi.handle_async_request(request)
    content = await response.aread()
    return httpx.Response(response.status_code, headers=response.headers, content=content)


class _Required:
    """Answers a request :meth:`LocalFarm.require` refuses with the API's error, else passes it on."""

    def __init__(self, app: ASGIApp, local: LocalFarm) -> None:
        self.app = app
        self.local = local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.local.require(scope["method"], scope["path"])
            except BuildfarmError as exc:
                await farm_error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _NoDispatcher:
    """Stands in for Celery where no broker is configured: account commands never send work."""

    def _refuse(self) -> None:
        raise PermanentError("no Redis configured: start the local farm (`buildfarm start`)")

    def advance(self, build_id: int) -> None:
        self._refuse()

    def run_step(self, step_id: int, attempt: int, kind: str, node: str | None = None) -> None:
        self._refuse()

    def check(self) -> None:
        self._refuse()

    def prepare_environment(self) -> None:
        self._refuse()
