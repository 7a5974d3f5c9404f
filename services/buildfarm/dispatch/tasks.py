"""Celery tasks: thin wrappers that call the engine with this process's farm context.

A service that is down (the database, Pulp, S3) makes a task log one line and end: the work it
was asked for stays recorded in the database, and the reaper sends it again within
``reaper_seconds`` (``redispatch_seconds`` for ready steps), so Celery's own retries are not used.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import cache

from celery import shared_task

from buildfarm.dispatch.context import make_context
from buildfarm.dispatch.nodes import this_node_labels
from buildfarm.engine import advance, reaper, steps
from buildfarm.engine.context import FarmContext
from buildfarm.metrics import LEASE_EXPIRIES, REDISPATCHES, STEPS_ACTIVE, STEPS_RUN, record_task_run
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
        with STEPS_ACTIVE.track_inprogress():
            ctx = farm_context()
            outcome = steps.run_step(
                ctx, step_id, _node_name(self.request.hostname), this_node_labels(ctx.settings)
            )
    except TemporaryError as exc:
        log.warning("step %s not run now, the reaper sends it again: %s", step_id, exc)
        STEPS_RUN.labels("postponed").inc()
        return "postponed"
    log.info("step %s: %s", step_id, outcome)
    STEPS_RUN.labels(outcome).inc()
    return outcome


@shared_task(name="buildfarm.prepare_environment")  # type: ignore[untyped-decorator]
def prepare_environment() -> None:
    """Make the package runner's environment a submit found missing (it answered "try again")."""
    from buildfarm.runners.base import PreparesEnvironment

    runner = farm_context().runner
    if not isinstance(runner, PreparesEnvironment):
        return
    try:
        runner.prepare_environment()
    except BuildfarmError as exc:
        log.warning("build environment not made, the next submit asks again: %s", exc)


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
    LEASE_EXPIRIES.inc(len(report.expired))
    REDISPATCHES.inc(len(report.redispatched))
    if report.expired or report.redispatched:
        log.warning("reaper: expired %s, redispatched %s", report.expired, report.redispatched)


def warm_up(*, scheduler: bool) -> None:
    """A worker just started: pay its first use of the database now, not in the first build
    (statements are compiled and ORM mappings set up at their first use in a process).  The
    scheduler reaps at once (the beat's first reap comes ``reaper_seconds`` later, in the first
    build, and its first pass cost several times the next ones); a node runs its step statements
    matching no row (:func:`steps.warm_up`)."""
    try:
        if scheduler:
            reap()
        else:
            steps.warm_up(farm_context())
    except BuildfarmError as exc:  # the database is down: the first build pays it, as before
        log.warning("warm-up skipped: %s", exc)


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
    from buildfarm.state.models import utcnow

    started = utcnow()
    try:
        report = run_sweep(farm_context(), dry_run=False)
    except BuildfarmError as exc:
        log.warning("retention: sweep not done, the next scheduled one tries again: %s", exc)
        _record("retention", started, ok=False, moved=0, detail=str(exc))
        return
    log.info("retention: %s", report)
    _record("retention", started, ok=True, moved=report.bytes_freed, detail=f"{report.builds_by_class}")
    _prune_environments()


def _prune_environments() -> None:
    """Environments and layers no kept build names go once the sweep expired their builds."""
    from buildfarm.environments.upkeep import prune_environments, uses_environment_cache

    settings = farm_context().settings
    if not uses_environment_cache(settings):
        return
    try:
        log.info("build environments: %s", prune_environments(settings).describe())
    except (BuildfarmError, OSError) as exc:
        log.warning("build environments not pruned, the next sweep tries again: %s", exc)


@shared_task(name="buildfarm.env_refresh", bind=True)  # type: ignore[untyped-decorator]
def env_refresh(self) -> None:  # type: ignore[no-untyped-def]
    """The scheduled refresh of this machine's build environment (setting env_refresh_schedule);
    on a Kubernetes farm, of the package-builder images made from it."""
    from buildfarm.environments.upkeep import prune_environments, refresh_environment, uses_environment_cache
    from buildfarm.runners.builderimage import makes_builder_image
    from buildfarm.state.models import utcnow
    from buildfarm.wiring import make_package_cache

    settings = farm_context().settings
    if makes_builder_image(settings):
        refresh_builder_images(_node_name(self.request.hostname))
        return
    if not uses_environment_cache(settings):
        return
    started = utcnow()
    try:
        env, new = refresh_environment(settings, make_package_cache(settings))
        pruned = prune_environments(settings)
    except (BuildfarmError, OSError) as exc:
        log.warning("build environment not refreshed, the next scheduled run tries again: %s", exc)
        _record("env_refresh", started, ok=False, moved=0, detail=str(exc))
        return
    detail = f"environment {env.short} ({'new' if new else 'unchanged'}); {pruned.describe()}"
    log.info("build environment refreshed: %s", detail)
    _record("env_refresh", started, ok=True, moved=pruned.bytes_freed, detail=detail)


def refresh_builder_images(node: str) -> None:
    """The nightly refresh of a Kubernetes farm: its environment (and each cross environment
    with an image) made afresh and made into package-builder images, the tags moved, so builds
    submitted from then on name the new digests; on a node that cannot make images (no mmdebstrap
    or buildah: the chart's worker pods), a failed run saying so and how old the image is."""
    from buildfarm.environments.upkeep import prune_environments
    from buildfarm.runners.builderimage import (
        cross_architectures,
        current_image_made,
        image_maker_missing,
        make_builder_images,
    )
    from buildfarm.state.models import utcnow
    from buildfarm.wiring import make_package_cache

    settings = farm_context().settings
    started = utcnow()
    missing = image_maker_missing()
    if missing is not None:
        try:
            made = current_image_made(settings)
        except BuildfarmError as exc:
            made = f"its age is unknown ({exc})"
        detail = (
            f"package-builder image not refreshed: node {node} cannot make it ({missing}); {made}: "
            "run `buildfarm env image --refresh` where mmdebstrap and buildah run"
        )
        log.warning("build environment: %s", detail)
        _record("env_refresh", started, ok=False, moved=0, detail=detail)
        return
    try:
        images = make_builder_images(
            settings,
            make_package_cache(settings),
            refresh=True,
            cross=(None, *cross_architectures(settings)),
        )
        pruned = prune_environments(settings)
    except (BuildfarmError, OSError) as exc:
        log.warning("package-builder image not refreshed, the next scheduled run tries again: %s", exc)
        _record("env_refresh", started, ok=False, moved=0, detail=str(exc))
        return
    detail = "; ".join([*(made.describe() for made in images), pruned.describe()])
    log.info("package-builder images refreshed: %s", detail)
    _record("env_refresh", started, ok=True, moved=pruned.bytes_freed, detail=detail)


@shared_task(name="buildfarm.backup_run")  # type: ignore[untyped-decorator]
def backup_run() -> None:
    from buildfarm.backup import run_backup
    from buildfarm.state.models import utcnow

    started = utcnow()
    try:
        report = run_backup(farm_context())
    except BuildfarmError as exc:
        log.warning("backup: run not done, the next scheduled one tries again: %s", exc)
        _record("backup", started, ok=False, moved=0, detail=str(exc))
        return
    log.info("backup: %s", report)
    _record("backup", started, ok=True, moved=report.copied_bytes, detail=f"{len(report.builds)} build(s)")


def _record(task: str, started: dt.datetime, *, ok: bool, moved: int, detail: str) -> None:
    """Keep the run's outcome for metrics; a database down now loses only this record."""
    try:
        record_task_run(farm_context().db, task, started, ok=ok, moved_bytes=moved, detail=detail)
    except BuildfarmError as exc:
        log.warning("%s: outcome not recorded: %s", task, exc)


@shared_task(name="buildfarm.notify_tick")  # type: ignore[untyped-decorator]
def notify_tick() -> dict[str, int]:
    """Webhooks and mails owed by builds that ended (issue 17): never in a build's own path."""
    from buildfarm.notify import tick
    from buildfarm.state.models import utcnow

    try:
        counts = tick(farm_context(), utcnow())
    except TemporaryError as exc:
        log.warning("notify: tick skipped, the next one delivers what is due: %s", exc)
        return {}
    if any(counts.get(k) for k in ("delivered", "retry", "failed")):
        log.info("notify: %s", counts)
    return counts
