"""Celery tasks: thin wrappers that call the engine with this process's farm context."""

from __future__ import annotations

import logging
from functools import cache

from celery import shared_task

from buildfarm.dispatch.context import make_context
from buildfarm.engine import advance, reaper, steps
from buildfarm.engine.context import FarmContext
from buildfarm.model.settings import load_settings

log = logging.getLogger(__name__)


@cache
def farm_context() -> FarmContext:
    """One context per worker process, built on first use (after Celery has forked, if it does)."""
    return make_context(load_settings())


def _node_name(hostname: str | None) -> str:
    return (hostname or "unknown").split("@", 1)[0]


@shared_task(name="buildfarm.run_step", bind=True)  # type: ignore[untyped-decorator]
def run_step(self, step_id: int) -> str:  # type: ignore[no-untyped-def]
    outcome = steps.run_step(farm_context(), step_id, _node_name(self.request.hostname))
    log.info("step %s: %s", step_id, outcome)
    return outcome


@shared_task(name="buildfarm.advance_build")  # type: ignore[untyped-decorator]
def advance_build(build_id: int) -> None:
    advance.advance_build(farm_context(), build_id)


@shared_task(name="buildfarm.reap")  # type: ignore[untyped-decorator]
def reap() -> None:
    report = reaper.reap(farm_context())
    if report.expired or report.redispatched:
        log.warning("reaper: expired %s, redispatched %s", report.expired, report.redispatched)
