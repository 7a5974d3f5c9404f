"""Celery tasks: thin wrappers that call the engine with this process's farm context.

A service that is down (the database, Pulp, S3) makes a task log one line and end: the work it
was asked for stays recorded in the database, and the reaper sends it again within
``reaper_seconds`` (``redispatch_seconds`` for ready steps), so Celery's own retries are not used.
"""

from __future__ import annotations

import logging
from functools import cache

from celery import shared_task

from buildfarm.dispatch.context import make_context
from buildfarm.engine import advance, reaper, steps
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError, TemporaryError
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
    try:
        outcome = steps.run_step(farm_context(), step_id, _node_name(self.request.hostname))
    except TemporaryError as exc:
        log.warning("step %s not run now, the reaper sends it again: %s", step_id, exc)
        return "postponed"
    log.info("step %s: %s", step_id, outcome)
    return outcome


@shared_task(name="buildfarm.advance_build")  # type: ignore[untyped-decorator]
def advance_build(build_id: int) -> None:
    try:
        advance.advance_build(farm_context(), build_id)
    except TemporaryError as exc:
        log.warning("build %s not advanced now, the reaper advances it again: %s", build_id, exc)


@shared_task(name="buildfarm.reap")  # type: ignore[untyped-decorator]
def reap() -> None:
    try:
        report = reaper.reap(farm_context())
    except TemporaryError as exc:
        log.warning("reaper: skipped this round: %s", exc)
        return
    if report.expired or report.redispatched:
        log.warning("reaper: expired %s, redispatched %s", report.expired, report.redispatched)


# -- the scheduler's periodic work (issue 7): schedules, retention, backups -------------------


@shared_task(name="buildfarm.schedules_tick")  # type: ignore[untyped-decorator]
def schedules_tick() -> list[int]:
    """Start the due slot of every schedule; the database, not beat, says which slots ran."""
    from buildfarm.schedules import tick
    from buildfarm.state.models import utcnow

    try:
        return tick(farm_context(), utcnow())
    except TemporaryError as exc:
        log.warning("schedules: tick skipped, the next one starts what is due: %s", exc)
        return []


@shared_task(name="buildfarm.retention_sweep")  # type: ignore[untyped-decorator]
def retention_sweep() -> None:
    from buildfarm.retention import run_sweep

    try:
        report = run_sweep(farm_context(), dry_run=False)
    except BuildfarmError as exc:
        log.warning("retention: sweep not done, the next scheduled one tries again: %s", exc)
        return
    log.info("retention: %s", report)


@shared_task(name="buildfarm.backup_run")  # type: ignore[untyped-decorator]
def backup_run() -> None:
    from buildfarm.backup import run_backup

    try:
        report = run_backup(farm_context())
    except BuildfarmError as exc:
        log.warning("backup: run not done, the next scheduled one tries again: %s", exc)
        return
    log.info("backup: %s", report)
