"""The FastAPI application a farm serves over the network.

:func:`create_app` takes the API's routes (:func:`buildfarm.api.routes.assemble`) and adds what
only a served farm has: the Redis rate limits and running-build cap, ``/metrics`` and the
dashboard (``/ui``).  Nothing here knows which backends the farm runs on.
"""

from __future__ import annotations

import redis
from fastapi import FastAPI

from buildfarm import accounts
from buildfarm.api.farm import NodeCache, queue_lengths, remote_status
from buildfarm.api.limits import AnonymousLimit, Limits
from buildfarm.api.routes import API, assemble
from buildfarm.dispatch.context import make_context
from buildfarm.engine.context import FarmContext
from buildfarm.metrics import FarmCollector, metrics_endpoint
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import Settings
from buildfarm.web import SESSION_COOKIE, mount_dashboard


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
