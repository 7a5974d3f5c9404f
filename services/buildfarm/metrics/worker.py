"""``/metrics`` on each Celery worker: what this process did since it started.

Farm-wide truth (queues, builds, durations) comes from the database through the API's
``/metrics``; a worker adds what only it sees: the steps it ran and how they ended, the step
it is running now, and, on the scheduler, the leases its reaper took back.  These are ordinary
in-process counters (a restart resets them, which Prometheus expects of counters).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from buildfarm.environments import LAYER_LOOKUPS

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
STEPS_RUN = Counter(
    "buildfarm_worker_steps",
    "Step deliveries this worker handled, by outcome (built, failed, lost, postponed, duplicate...)",
    ["outcome"],
    registry=REGISTRY,
)
STEPS_ACTIVE = Gauge("buildfarm_worker_steps_active", "Steps this worker is running now", registry=REGISTRY)
LEASE_EXPIRIES = Counter(
    "buildfarm_lease_expiries",
    "Running steps whose lease expired (node silent) and that the reaper put back to ready",
    registry=REGISTRY,
)
REDISPATCHES = Counter(
    "buildfarm_redispatches",
    "Ready steps nobody took that the reaper sent to the queue again",
    registry=REGISTRY,
)

REGISTRY.register(LAYER_LOOKUPS)  # dependency layers: hit, miss, none, failed (issue 15)


def port_file(state_dir: Path, node: str) -> Path:
    """Where a worker started with port 0 writes the port it got (the local farm; tests read it)."""
    return state_dir / "run" / f"{node}.metrics-port"


def serve_worker_metrics(host: str, port: int, state_dir: Path, node: str) -> int:
    """Serve ``/metrics`` of this worker on ``host:port`` (0: any free port, written to the port file)."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound = int(server.server_port)
    if port == 0:
        target = port_file(state_dir, node)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(target)
    log.info("metrics of %s on http://%s:%d/metrics", node, host, bound)
    return bound
