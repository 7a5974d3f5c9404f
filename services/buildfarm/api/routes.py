"""The API's routes, assembled: what every front door of a farm shares.

One router per concern (``farm``, ``sources``, ``builds``, ``logs``, ``repos``, ``accounts``,
``mirrors``, ``schedules``, ``retention``), each answering with the wire models of
:mod:`buildfarm_client.models` (the OpenAPI schema is made from them).  Every handler takes the
caller's principal (:mod:`buildfarm.api.auth`), asks :mod:`buildfarm.accounts.policy` whether they
may, then calls the engine or a feature package.  :func:`buildfarm.api.app.create_app` serves them
over the network; :mod:`buildfarm.local.inprocess` calls them in-process for the local CLI.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from buildfarm.api import errors
from buildfarm.api.accounts import accounts_router
from buildfarm.api.builds import builds_router
from buildfarm.api.farm import FarmStatusSource, farm_router
from buildfarm.api.limits import Limits
from buildfarm.api.logs import logs_router
from buildfarm.api.mirrors import mirrors_router
from buildfarm.api.repos import repos_router
from buildfarm.api.retention import retention_router
from buildfarm.api.schedules import schedules_router
from buildfarm.api.sources import sources_router
from buildfarm.engine.context import FarmContext
from buildfarm.retention import Progress

API = "/api/v1"


def assemble(
    farm: FarmContext,
    limits: Limits | None,
    status: FarmStatusSource,
    *,
    sweep_progress: Callable[[], Progress | None] | None = None,
) -> FastAPI:
    """The API's routes over ``farm``.  ``limits`` None: no running-build cap (a local farm is its
    user's own); ``status`` answers ``/status``; ``sweep_progress`` gives the retention sweep a
    progress callback (the local CLI's bars)."""
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
