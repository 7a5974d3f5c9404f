"""Entry point for ``celery -A buildfarm.dispatch.worker:app``: the app built from settings.

A build node records itself and its labels in the nodes table when it is ready and every
``node_heartbeat_seconds`` after (:mod:`buildfarm.dispatch.nodes`).

When ``worker_metrics_port`` is set, each worker serves its ``/metrics`` once it is ready.

A worker with ``runner: kubernetes`` runs the builder orphan reaper once when it is ready, so
the steps its previous incarnation on this node held are settled before it builds again.
"""

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from buildfarm.dispatch.builders import reap_on_worker_start
from buildfarm.dispatch.celery_app import make_celery
from buildfarm.dispatch.nodes import NodeHeartbeat
from buildfarm.dispatch.tasks import farm_context, warm_up
from buildfarm.engine.workdirs import REMOVALS
from buildfarm.metrics import serve_worker_metrics
from buildfarm.model.settings import settings_at_start

SCHEDULER_NODE = "scheduler"
"""The scheduler's worker name (local farm and chart): it takes no step, so it is no node."""

settings = settings_at_start()
app = make_celery(settings)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _reap_builders(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None) or ""
    reap_on_worker_start(settings, settings.builders.node or hostname.split("@", 1)[0] or None)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _report_node(sender: Any = None, **_: Any) -> None:
    """Record this node and its labels now and every ``node_heartbeat_seconds`` (a build node
    only: the scheduler consumes the control queue and takes no step)."""
    hostname = getattr(sender, "hostname", None) or ""
    node = settings.builders.node or hostname.split("@", 1)[0]
    if not node or node == SCHEDULER_NODE:
        return
    NodeHeartbeat(farm_context(), node).start()


@worker_ready.connect  # type: ignore[untyped-decorator]
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    if settings.metrics.worker_port is None:
        return
    hostname = getattr(sender, "hostname", None) or ""
    node = settings.builders.node or hostname.split("@", 1)[0] or "worker"
    serve_worker_metrics(settings.metrics.worker_host, settings.metrics.worker_port, settings.state_dir, node)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _warm_up(sender: Any = None, **_: Any) -> None:
    """Before the worker takes its first message (it answers pings only after its ready handlers
    ran, so ``buildfarm start`` returns once this is done)."""
    hostname = getattr(sender, "hostname", None) or ""
    warm_up(scheduler=(settings.builders.node or hostname.split("@", 1)[0]) == SCHEDULER_NODE)


REMOVALS_AT_STOP_SECONDS = 30.0
"""How long a stopping worker waits for its last steps' work directories to be removed; what is
left then is the reaper's (its sweep of dead attempts)."""


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _finish_removals(**_: Any) -> None:
    REMOVALS.wait(timeout=REMOVALS_AT_STOP_SECONDS)
