"""Prometheus metrics of the farm (issue 17).

* :class:`FarmCollector` — farm-wide series read from the database at scrape time, served by
  the API at ``/metrics`` (:func:`metrics_endpoint`);
* :mod:`.worker` counters and :func:`serve_worker_metrics` — ``/metrics`` of each Celery worker;
* :func:`record_task_run` — the scheduler's record of each retention sweep and backup.
"""

from buildfarm.metrics.endpoint import metrics_endpoint
from buildfarm.metrics.farm import FarmCollector
from buildfarm.metrics.runs import record_task_run
from buildfarm.metrics.worker import (
    LEASE_EXPIRIES,
    REDISPATCHES,
    STEPS_ACTIVE,
    STEPS_RUN,
    port_file,
    serve_worker_metrics,
)

__all__ = [
    "LEASE_EXPIRIES",
    "REDISPATCHES",
    "STEPS_ACTIVE",
    "STEPS_RUN",
    "FarmCollector",
    "metrics_endpoint",
    "port_file",
    "record_task_run",
    "serve_worker_metrics",
]
