"""The FastAPI application: builds, sources, logs, apt lines and administration over HTTP.

:func:`create_app` only assembles: one router per concern (``farm``, ``sources``, ``builds``,
``logs``, ``repos``, ``accounts``, ``mirrors``, ``schedules``, ``retention``), each answering with the
wire models of :mod:`buildfarm_client.models` (the OpenAPI schema is made from them).  Every
handler takes the caller's principal (:mod:`buildfarm.api.auth`), asks
:mod:`buildfarm.accounts.policy` whether they may, then calls the same engine functions the local
CLI calls; nothing here knows which backends the farm runs on.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from fastapi import FastAPI

from buildfarm import accounts
from buildfarm.api import errors
from buildfarm.api.accounts import accounts_router
from buildfarm.api.builds import builds_router
from buildfarm.api.farm import FarmStatusSource, NodeCache, farm_router, queue_lengths, remote_status
from buildfarm.api.limits import AnonymousLimit, Limits
from buildfarm.api.logs import logs_router
from buildfarm.api.mirrors import mirrors_router
from buildfarm.api.repos import repos_router
from buildfarm.api.retention import retention_router
from buildfarm.api.schedules import schedules_router
from buildfarm.api.sources import sources_router
from buildfarm.dispatch.context import make_context
from buildfarm.engine.context import FarmContext
from buildfarm.metrics import FarmCollector, metrics_endpoint
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import Settings
from buildfarm.retention import Progress
from buildfarm.web import SESSION_COOKIE, mount_dashboard

API = "/api/v1"


def create_app(settings: Settings, ctx: FarmContext | None = None) -> FastAPI:
    """The API over the farm described by ``settings``."""
    farm = ctx or make_context(settings)
    if not settings.broker.url:
        raise PermanentError("the API needs Redis (rate limits, dispatch): set BUILDFARM_REDIS_URL")
    limits = Limits(
        redis.Redis.from_url(settings.broker.url, socket_timeout=5, socket_connect_timeout=5),
        settings.api.rate_per_minute,
        settings.api.max_running_builds,
        settings.api.anonymous_rate_per_minute,
    )
    farm.store.check()
    farm.repo.check()
    accounts.ensure_projects(farm, settings.projects)
    nodes = NodeCache(settings)
    app = assemble(farm, limits, remote_status(farm, limits, nodes))
    exempt = frozenset({f"{API}/health", "/metrics"})
    app.add_middleware(AnonymousLimit, limits=limits, exempt=exempt, session_cookie=SESSION_COOKIE)
    app.state.limits = limits
    app.router.routes.append(metrics_endpoint(FarmCollector(farm.db, nodes.get, queue_lengths(limits))))
    mount_dashboard(app, farm, limits, nodes.get)
    return app


def assemble(
    farm: FarmContext,
    limits: Limits | None,
    status: FarmStatusSource,
    *,
    sweep_progress: Callable[[], Progress | None] | None = None,
) -> FastAPI:
    """The API's routes over ``farm``: what every front door shares (the network API above, the
    local CLI's in-process one in :mod:`buildfarm.local.inprocess`).  ``limits`` None: no
    running-build cap (a local farm is its user's own); ``status`` answers ``/status``;
    ``sweep_progress`` gives the retention sweep a progress callback (the local CLI's bars)."""
    app = FastAPI(
        title="buildfarm",
        version="1",
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
        responses=errors.ERROR_RESPONSES,
    )
    errors.install(app)
    app.state.farm = farm
    for router in (
        farm_router(farm, status),
        sources_router(farm),
        builds_router(farm, limits),
        logs_router(farm),
        repos_router(farm),
        accounts_router(farm),
        mirrors_router(farm),
        schedules_router(farm),
        retention_router(farm, sweep_progress),
    ):
        app.include_router(router, prefix=API)
    return app
