"""The API's ``GET /metrics``: the farm collector in Prometheus' text format.

Unauthenticated, like every Prometheus target: the series carry counts, project and node names,
never a build's content or a token.  The chart exposes it only inside the cluster.  The scrape
runs in a worker thread (the collector waits on the database).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from buildfarm.metrics.farm import FarmCollector


def metrics_endpoint(collector: FarmCollector, path: str = "/metrics") -> Route:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    async def scrape(_request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route(path, scrape, methods=["GET"], include_in_schema=False)
