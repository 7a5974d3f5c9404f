"""The retention sweep: find the expired builds, then delete them from every store together.

What a sweep did and the storage report are the API's wire models (``SweepReportOut``,
``StorageReportOut`` of :mod:`buildfarm_client.models`), filled here and answered as they are.

Choosing what expires (:mod:`buildfarm.retention.expiry`) costs what expires, not what is kept,
and no store is ever listed: an object is a deletion candidate only because an expired row
names it, and it goes only when no surviving row names it (:mod:`buildfarm.model.retention`).

The order makes a crash harmless and a second run finish the job: the repository first
(each expired build's distribution, then its garbage collection), registry manifests, content
objects (only those older than the grace period: an upload in flight refreshes its object),
logs and build manifests, and only then the rows.  Until its rows are gone an expired build is
found again by the next sweep, and every deletion is idempotent.  Two kinds of leftovers no
build row names are swept too: uploads (``Upload`` rows) older than ``retention_upload_hours``
that no build references go with the content objects, and a repository that keeps versions
(Pulp) deletes those a crashed build left unserved, before its garbage collection.  Before
anything is deleted the expired steps are marked (``EXPIRED_INPUT_KEY``) in the transaction that
chose them, so that no build submitted meanwhile reuses them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from buildfarm.backends.base import BuildRef, VersionedPackageRepository
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError, TemporaryError
from buildfarm.model.images import split_reference
from buildfarm.model.retention import EXPIRED_INPUT_KEY, BuildRecord, SweepPlan, grace_cutoff
from buildfarm.model.settinggroups import RetentionSettings
from buildfarm.model.types import OutputKind
from buildfarm.retention.expiry import Selection, chunks, select_expired
from buildfarm.state.models import Build, Step, StepOutput, Upload, utcnow
from buildfarm_client.models import StorageGroupOut, StorageReportOut, SweepReportOut

__all__ = [
    "Progress",
    "Selection",
    "record_upload",
    "run_sweep",
    "select_expired",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: the CLI draws a bar from it."""


# -- the sweep ---------------------------------------------------------------------------------


def _ref(build: BuildRecord) -> BuildRef:
    return BuildRef(build.id, build.project, build.branch, build.kind, build.user)


def _mark_expired(session: Session, plan: SweepPlan) -> None:
    """Make the expiring steps unusable for reuse before their bytes go (kept producers excepted)."""
    for chunk in chunks(sorted(plan.unreusable)):
        session.execute(update(Step).where(Step.id.in_(chunk)).values(input_key=EXPIRED_INPUT_KEY))


def _unmark(ctx: FarmContext, selection: Selection, builds: set[int]) -> None:
    """Give back their input keys to the steps of builds that stay whole after all."""
    with ctx.db.session() as session:
        for step in selection.steps:
            if step.build_id in builds and step.input_key != EXPIRED_INPUT_KEY:
                session.execute(update(Step).where(Step.id == step.id).values(input_key=step.input_key))


def _expire_in_repository(
    ctx: FarmContext, plan: SweepPlan, report: SweepReportOut, progress: Progress | None
) -> set[int]:
    """Expire the builds' distributions; return the builds the repository refused (kept whole)."""
    todo = [*plan.deleted_builds, *(b for b in plan.reduced_builds if b.published)]
    refused: set[int] = set()
    whole = {b.id for b in plan.deleted_builds}
    for done, build in enumerate(todo, 1):
        try:
            if build.staging and build.id in whole:  # its row goes: the reaper will not see it again
                ctx.repo.drop_staging(_ref(build))
            ctx.repo.expire_build(_ref(build))
        except TemporaryError:
            raise
        except BuildfarmError as exc:
            log.warning("retention: build %s not expired in the repository: %s", build.id, exc)
            refused.add(build.id)
        if progress:
            progress("repository", done, len(todo))
    return refused


def _sweep_repository_leftovers(
    ctx: FarmContext, policy: RetentionSettings, now: dt.datetime, *, dry_run: bool
) -> int:
    """Repository versions that crashed builds left (only a repository that keeps versions has them)."""
    if not isinstance(ctx.repo, VersionedPackageRepository):
        return 0
    return ctx.repo.sweep_leftover_versions(grace_cutoff(policy, now), dry_run=dry_run)


def _delete_images(ctx: FarmContext, plan: SweepPlan, report: SweepReportOut) -> None:
    """Delete the expired image steps' manifests, then collect the registry's garbage when this
    node can (the local profile's registry; in a cluster the chart's CronJob does it)."""
    if not plan.images or not ctx.settings.registry.url:
        return
    client = ctx.parts.registry()
    try:
        for reference, digest in plan.images:
            _host, repository, _tag = split_reference(reference)
            report.images += client.delete_manifest(repository, f"sha256:{digest}")
        report.registry_bytes_freed = client.collect_garbage()
    except TemporaryError:
        raise  # nothing of the rows is gone yet: the next sweep deletes them
    except BuildfarmError as exc:  # e.g. deletes disabled: the rest of the sweep still runs
        line = f"registry images not (all) deleted: {exc}"
        log.warning("retention: %s", line)
        report.warnings.append(line)


def _delete_rows(ctx: FarmContext, plan: SweepPlan, report: SweepReportOut) -> None:
    deleted_builds = [b.id for b in plan.deleted_builds]
    with ctx.db.session() as session:
        for chunk in chunks(sorted(plan.dropped_output_steps)):
            session.execute(delete(StepOutput).where(StepOutput.step_id.in_(chunk)))
        for chunk in chunks(sorted(plan.doomed_steps)):
            report.steps_deleted += session.execute(delete(Step).where(Step.id.in_(chunk))).rowcount  # type: ignore[attr-defined]
        for chunk in chunks([b.id for b in plan.reduced_builds if b.published]):
            session.execute(update(Build).where(Build.id.in_(chunk)).values(published_url=None))
        for chunk in chunks(deleted_builds):
            session.execute(delete(Build).where(Build.id.in_(chunk)))
        for chunk in chunks([u.id for u in plan.uploads]):
            session.execute(delete(Upload).where(Upload.id.in_(chunk)))


def run_sweep(
    ctx: FarmContext, *, dry_run: bool, now: dt.datetime | None = None, progress: Progress | None = None
) -> SweepReportOut:
    """Apply the retention policy to every store; ``dry_run`` only reports what would go."""
    started = time.monotonic()
    now = now or utcnow()
    policy = ctx.settings.retention
    with ctx.db.session() as session:  # one transaction: no build reuses a step once it is chosen
        selection = select_expired(session, policy, now)
        if not dry_run:
            _mark_expired(session, selection.plan)
    plan = selection.plan
    report = SweepReportOut(dry_run=dry_run, selection_seconds=selection.seconds)
    if dry_run:
        _fill_counts(report, plan, selection)
        report.bytes_freed = sum(_object_sizes(ctx, plan, selection.delete_objects).values())
        report.repository_versions = _sweep_repository_leftovers(ctx, policy, now, dry_run=True)
        report.seconds = time.monotonic() - started
        return report
    if plan.expired_builds:
        refused = _expire_in_repository(ctx, plan, report, progress)
        if refused:  # kept whole: the repository said it still serves them
            _unmark(ctx, selection, refused)
            selection.make_plan(keep_whole=refused)
            plan = selection.plan
        report.skipped_builds = sorted(refused)
    report.repository_versions = _sweep_repository_leftovers(ctx, policy, now, dry_run=False)
    if plan.expired_builds or report.repository_versions:
        report.repository_bytes_freed = ctx.repo.collect_garbage()
    if plan.expired_builds or plan.uploads:
        _delete_images(ctx, plan, report)
        result = ctx.store.delete_objects(selection.delete_objects, older_than=grace_cutoff(policy, now))
        report.objects, report.objects_skipped_recent = result.deleted, result.skipped_recent
        report.bytes_freed += result.freed_bytes
        for done, key in enumerate(plan.logs, 1):
            report.bytes_freed += ctx.store.delete_log(key)
            if progress and (done % 50 == 0 or done == len(plan.logs)):
                progress("logs", done, len(plan.logs))
        report.logs = len(plan.logs)
        for build in plan.deleted_builds:
            ctx.store.delete_build_manifest(build.id)
        _delete_rows(ctx, plan, report)
        _fill_counts(report, plan, selection, objects=False)
    report.seconds = time.monotonic() - started
    log.info(
        "retention: %d build(s) expired %s, %d object(s) (%d unsubmitted upload(s)), %d log(s), "
        "%d repository version(s) left by crashed builds, %d bytes freed",
        len(report.build_ids),
        report.builds_by_class,
        report.objects,
        report.uploads,
        report.logs,
        report.repository_versions,
        report.bytes_freed,
    )
    return report


def _fill_counts(
    report: SweepReportOut, plan: SweepPlan, selection: Selection, *, objects: bool = True
) -> None:
    report.builds_by_class = plan.by_class()
    report.build_ids = [b.id for b in plan.expired_builds]
    report.builds_deleted = len(plan.deleted_builds)
    report.builds_reduced = len(plan.reduced_builds)
    report.uploads = len({u.sha256 for u in plan.uploads} & set(selection.delete_objects))
    if objects:
        report.objects = len(selection.delete_objects)
        report.logs = len(plan.logs)
        report.images = len(plan.images)
        report.steps_deleted = len(plan.doomed_steps)


def _object_sizes(ctx: FarmContext, plan: SweepPlan, shas: Iterable[str]) -> dict[str, int]:
    """Sizes of objects: from the output rows when known, else asked of the store (sources)."""
    sizes: dict[str, int] = {}
    for sha in shas:
        known = plan.objects.get(sha)
        size = known if known is not None else ctx.store.object_size(sha)
        if size is not None:
            sizes[sha] = size
    return sizes


# -- uploads -----------------------------------------------------------------------------------


def record_upload(ctx: FarmContext, sha256: str, user: str, size: int | None = None) -> None:
    """Remember an upload (API ``PUT /sources/<sha256>``), so that a sweep finds it if no build
    ever names it; ``size`` None: asked of the store (an upload whose bytes were stored before)."""
    if size is None:
        size = ctx.store.object_size(sha256) or 0
    with ctx.db.session() as session:
        session.add(Upload(sha256=sha256, size=size, user=user, uploaded_at=utcnow()))


# -- the storage report ------------------------------------------------------------------------


def storage_report(ctx: FarmContext, now: dt.datetime | None = None) -> StorageReportOut:
    """Bytes by class, project and branch, and what the next sweep would free.

    Output sizes come from the rows; source tarballs are sized by the store, once per distinct
    tarball (a stat locally, a HEAD on S3).  A file shared by several builds counts in the group
    of the step that made it; ``output_bytes`` of the report counts each distinct file once.
    ``uploads`` are the uploaded objects no build names: submitted soon, or swept once expired.
    """
    groups: dict[tuple[str, str, str], StorageGroupOut] = {}
    with ctx.db.session() as session:
        counted = session.execute(
            select(Build.kind, Build.project, Build.branch, func.count()).group_by(
                Build.kind, Build.project, Build.branch
            )
        )
        for kind, project, branch, count in counted:
            groups[(kind, project, branch)] = StorageGroupOut(
                kind=kind, project=project, branch=branch, builds=count, output_bytes=0
            )
        sized = session.execute(
            select(Build.kind, Build.project, Build.branch, func.coalesce(func.sum(StepOutput.size), 0))
            .select_from(StepOutput)
            .join(Step, Step.id == StepOutput.step_id)
            .join(Build, Build.id == Step.build_id)
            .where(StepOutput.kind != OutputKind.IMAGE)
            .group_by(Build.kind, Build.project, Build.branch)
        )
        for kind, project, branch, size in sized:
            groups[(kind, project, branch)].output_bytes = int(size)
        distinct = select(StepOutput.sha256, func.max(StepOutput.size).label("size")).where(
            StepOutput.kind != OutputKind.IMAGE
        )
        total = session.scalar(
            select(func.coalesce(func.sum(distinct.group_by(StepOutput.sha256).subquery().c.size), 0))
        )
        sources = session.execute(
            select(Build.kind, Build.project, Build.branch, Step.source_sha256)
            .join(Build, Build.id == Step.build_id)
            .where(Step.reused_from.is_(None))
            .distinct()
        ).all()
        named = select(Step.id).where(Step.source_sha256 == Upload.sha256).limit(1).correlate(Upload)
        unsubmitted = session.execute(
            select(Upload.sha256, func.max(Upload.size)).where(~named.exists()).group_by(Upload.sha256)
        ).all()
    sizes: dict[str, int | None] = {}
    for kind, project, branch, sha in sources:  # one size look-up per distinct tarball
        if sha not in sizes:
            sizes[sha] = ctx.store.object_size(sha)
        groups[(kind, project, branch)].source_bytes += sizes[sha] or 0
    ordered = sorted(groups.values(), key=lambda g: (g.kind, g.project, g.branch))
    return StorageReportOut(
        groups=ordered,
        builds=sum(g.builds for g in ordered),
        output_bytes=int(total or 0),
        next_sweep=run_sweep(ctx, dry_run=True, now=now),
        uploads=len(unsubmitted),
        upload_bytes=sum(int(size) for _sha, size in unsubmitted),
    )
