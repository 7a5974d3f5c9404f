"""What a person does to builds: list, show, logs, cancel, retry, apt sources.

The REST API calls these (the local CLI through it, in-process); they return the API's wire
models (:mod:`buildfarm_client.models`: a build is one ``BuildView`` from the database to the
client), never print.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from buildfarm.backends.base import AptSource
from buildfarm.engine import waiting
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import ConflictError, NotFoundError, TemporaryError
from buildfarm.model.types import TERMINAL_BUILD_STATES, BuildKind, BuildState, StepState
from buildfarm.state.models import Build, Step, utcnow
from buildfarm_client.models import BuildPageOut, BuildView, StepView

log = logging.getLogger(__name__)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _log_location(ctx: FarmContext, key: str | None) -> str | None:
    """Where the log is, or None: a build is still shown while the artifact store is down."""
    if key is None:
        return None
    try:
        return ctx.store.log_location(key)
    except TemporaryError as exc:
        log.warning("log %s not located: %s", key, exc)
        return None


_REVISION_COLUMNS = (
    Step.id,
    Step.state,
    Step.reused_from,
    Step.attempt,
    Step.node,
    Step.started_at,
    Step.finished_at,
    Step.log_key,
    Step.error,
    Step.output_identity,
    Step.reuse_reason,
    Step.layer,
)
"""What a step's view shows that changes while the build runs (its outputs come with its end)."""


def _revision(values: tuple[Any, ...]) -> str:
    return hashlib.blake2b(repr(values).encode(), digest_size=6).hexdigest()


def _step_view(ctx: FarmContext, step: Step) -> StepView:
    duration = None
    if step.started_at and step.finished_at and step.reused_from is None:
        duration = round((step.finished_at - step.started_at).total_seconds(), 2)
    outputs = step.outputs
    return StepView(
        id=step.id,
        name=step.name,
        version=step.version,
        state=step.display_state,
        node=step.node,
        attempt=step.attempt,
        depends_on=list(step.depends_on),
        input_key=step.input_key,
        reused_from=step.reused_from,
        started_at=_iso(step.started_at),
        finished_at=_iso(step.finished_at),
        duration_seconds=duration,
        log=_log_location(ctx, step.log_key),
        error=step.error,
        outputs=[
            {"filename": o.filename, "sha256": o.sha256, "size": o.size, "kind": o.kind} for o in outputs
        ],
        revision=_revision(tuple(getattr(step, column.key) for column in _REVISION_COLUMNS)),
        output_identity=step.output_identity,
        reuse_reason=step.reuse_reason,
        requires=step.requires,
        host_arch=step.host_arch,
        layer=step.layer,
    )


def _build_view(ctx: FarmContext, build: Build, with_steps: bool) -> BuildView:
    return BuildView(
        id=build.id,
        project=build.project,
        branch=build.branch,
        kind=build.kind,
        user=build.user,
        state=build.state,
        created_at=_iso(build.created_at) or "",
        finished_at=_iso(build.finished_at),
        published=build.published_url,
        error=build.error,
        steps=[_step_view(ctx, s) for s in build.steps] if with_steps else [],
    )


def _get_build(session: Any, build_id: int) -> Build:
    build = session.get(Build, build_id)
    if build is None:
        raise NotFoundError(f"build {build_id} does not exist")
    return build  # type: ignore[no-any-return]


def build_changes(ctx: FarmContext, build_id: int, known: Mapping[int, str]) -> BuildView:
    """The build with only the steps whose revision differs from ``known`` (step id -> revision,
    as earlier views gave them): what ``--wait`` needs to follow a build.  One narrow query
    compares every step; only the changed ones are loaded, with their outputs."""
    with ctx.db.session() as session:
        build = _get_build(session, build_id)
        rows = session.execute(select(*_REVISION_COLUMNS).where(Step.build_id == build_id))
        changed = [row[0] for row in rows if known.get(row[0]) != _revision(tuple(row))]
        steps: list[Step] = []
        if changed:
            steps = list(
                session.scalars(
                    select(Step)
                    .where(Step.id.in_(changed))
                    .options(selectinload(Step.outputs))
                    .order_by(Step.id)
                )
            )
        view = _build_view(ctx, build, with_steps=False)
        view.steps = [_step_view(ctx, s) for s in steps]
        return view


def show_build(ctx: FarmContext, build_id: int) -> BuildView:
    with ctx.db.session() as session:
        # Steps and their outputs in two more queries, not one query per step (issue 16 part 5).
        build = session.get(Build, build_id, options=[selectinload(Build.steps).selectinload(Step.outputs)])
        if build is None:
            raise NotFoundError(f"build {build_id} does not exist")
        view = _build_view(ctx, build, with_steps=True)
        waits = waiting.explain(session, ctx, build)
        for step in view.steps:
            if step.id in waits:
                step.position, step.waiting = waits[step.id].position, waits[step.id].reason
        return view


def page_builds(
    ctx: FarmContext,
    project: str | None = None,
    branch: str | None = None,
    state: str | None = None,
    per_page: int = 50,
    *,
    kind: str | None = None,
    user: str | None = None,
    page: int = 1,
    viewer: tuple[str, list[str]] | None = None,
    projects: list[str] | None = None,
) -> BuildPageOut:
    """Page ``page`` (from 1) of the builds, newest first, ``per_page`` a page. ``viewer`` =
    (user, projects they maintain): others' personal builds outside those projects are hidden;
    ``projects`` limits the listing to those projects."""
    filters: list[Any] = []
    for column, value in (
        (Build.project, project),
        (Build.branch, branch),
        (Build.state, state),
        (Build.kind, kind),
        (Build.user, user),
    ):
        if value:
            filters.append(column == value)
    if projects is not None:
        filters.append(Build.project.in_(projects))
    if viewer is not None:
        name, maintained = viewer
        mine = or_(Build.kind != BuildKind.PERSONAL, Build.user == name, Build.project.in_(maintained))
        filters.append(mine)
    with ctx.db.session() as session:
        total = session.scalar(select(func.count()).select_from(Build).where(*filters)) or 0
        query = (
            select(Build)
            .where(*filters)
            .order_by(Build.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        )
        items = [_build_view(ctx, b, with_steps=True) for b in session.scalars(query)]
        return BuildPageOut(items=items, page=page, per_page=per_page, total=int(total))


def find_step(ctx: FarmContext, build_id: int, step_name: str) -> StepView:
    with ctx.db.session() as session:
        build = _get_build(session, build_id)
        for step in build.steps:
            if step.name == step_name:
                return _step_view(ctx, step)
        known = ", ".join(s.name for s in build.steps)
        raise NotFoundError(f"build {build_id} has no step {step_name!r} (steps: {known})")


def step_log_key(ctx: FarmContext, build_id: int, step_name: str) -> tuple[str | None, bool]:
    """The log key of a step's latest attempt and whether the step is still going."""
    with ctx.db.session() as session:
        build = _get_build(session, build_id)
        for step in build.steps:
            if step.name == step_name:
                live = step.state in (StepState.PENDING, StepState.READY, StepState.RUNNING)
                return step.log_key, live
    find_step(ctx, build_id, step_name)  # raises the NotFoundError with the list of steps
    return None, False


def end_build(session: Session, build: Build, state: BuildState, error: str, step_error: str) -> None:
    """End ``build`` as ``state`` with ``error``: its steps not done are cancelled with
    ``step_error`` (a node's result of one is then refused: its lease is taken back) and its
    packing lease, if any, is dropped.  The steps that were built stay built (another build may
    reuse them).  The caller holds the build (cancel, a failed or abandoned packing)."""
    now = utcnow()
    session.execute(
        update(Step)
        .where(
            Step.build_id == build.id,
            Step.state.in_([StepState.PENDING, StepState.READY, StepState.RUNNING]),
        )
        .values(
            state=StepState.CANCELLED,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error=step_error,
        )
    )
    build.state = state
    build.finished_at = now
    build.error = error
    build.packing_until = None


def cancel_build(ctx: FarmContext, build_id: int) -> BuildView:
    with ctx.db.session() as session:
        build = _get_build(session, build_id)
        if build.state in TERMINAL_BUILD_STATES or build.state == BuildState.PUBLISHING:
            raise ConflictError(f"build {build_id} is {build.state}; only a running build can be cancelled")
        end_build(session, build, BuildState.CANCELLED, "cancelled", "cancelled")
    ctx.dispatcher.advance(build_id)
    return show_build(ctx, build_id)


def retry_build(ctx: FarmContext, build_id: int) -> BuildView:
    """Run the failed and cancelled steps (and the ones they skipped) of a finished build again."""
    with ctx.db.session() as session:
        build = _get_build(session, build_id)
        if build.state not in (BuildState.FAILED, BuildState.CANCELLED):
            raise ConflictError(
                f"build {build_id} is {build.state}; only failed or cancelled builds can be retried"
            )
        unpacked = session.scalar(
            select(Step.name).where(Step.build_id == build_id, Step.input_key == "").limit(1)
        )
        if unpacked is not None:  # its submit failed to make the source package: nothing to retry
            raise ConflictError(
                f"build {build_id} cannot be retried: its submit did not make every source package "
                f"({build.error}); submit it again"
            )
        session.execute(
            update(Step)
            .where(
                Step.build_id == build_id,
                Step.state.in_([StepState.FAILED, StepState.CANCELLED, StepState.SKIPPED]),
            )
            .values(state=StepState.PENDING, finished_at=None, error=None, ready_at=None, attempt_lost=False)
        )
        build.state = BuildState.RUNNING
        build.finished_at = None
        build.error = None
    ctx.dispatcher.advance(build_id)
    return show_build(ctx, build_id)


def apt_sources(ctx: FarmContext, project: str, branch: str, build_id: int | None = None) -> AptSource:
    return ctx.repo.sources(project, branch, build_id)


def running_steps(ctx: FarmContext) -> list[dict[str, Any]]:
    with ctx.db.session() as session:
        rows = session.execute(
            select(Step.build_id, Step.name, Step.node, Step.attempt, Step.started_at)
            .where(Step.state == StepState.RUNNING)
            .order_by(Step.started_at)
        ).all()
        return [
            {"build": b, "step": n, "node": node, "attempt": a, "started_at": _iso(s)}
            for b, n, node, a, s in rows
        ]
