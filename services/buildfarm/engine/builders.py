"""Builder pods and the steps they belong to: adoption of a live Job, and the orphan reaper.

**Adoption.**  A step's lease can expire while its builder pod still runs: the worker that
followed it was restarted, or lost its database connection for longer than ``lease_seconds``.
Building it again would waste the work and, worse, run two builds of one step.  So when a message
for such a step arrives (redelivered by Celery, or re-sent by the engine's reaper) and the
Job of the step's *current* attempt exists, the new worker takes the lease over with the SAME
attempt and follows that Job (:class:`buildfarm.runners.kubernetes.KubernetesRunner` finds it by
its deterministic name) instead of starting a new attempt.  Any node may adopt: following runs
through the API, and the pod stays on the node it was pinned to.

**The orphan reaper** (``python -m buildfarm.dispatch.builders reap``: the chart's cleanup
CronJob; and every kubernetes worker once at start) lists the builder Jobs and pods (by the
farm's labels, in the builder namespace only) and deletes those whose step is finished, unknown,
or has moved on to a newer attempt; it keeps those of running steps and of ready steps waiting to
be adopted.  Running steps whose Job and pod vanished (older than ``grace_seconds``, and either
their lease expired or they belong to this node's previous worker) go back to ``ready``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sqlalchemy import false, or_, select, update
from sqlalchemy.orm import Session

from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError, PermanentError
from buildfarm.model.types import StepState
from buildfarm.runners.base import ListsBuilders
from buildfarm.state.models import Build, Step, utcnow

log = logging.getLogger(__name__)

VANISHED_GRACE_SECONDS = 120.0
"""A running step without a Job is only called vanished after this long: between the claim and
the Job's creation there is a moment with no Job at all."""
_LIVE = (StepState.READY, StepState.RUNNING)


@runtime_checkable
class FollowingRunner(Protocol):
    """A runner whose work lives outside the worker and can be followed again (kubernetes)."""

    def exists(self, build_id: int, step_name: str, attempt: int) -> bool: ...


def can_adopt(ctx: FarmContext, step: Step, now: dt.datetime) -> bool:
    """Whether a message for ``step`` should follow its current attempt's Job instead of a new one.

    RUNNING with an expired lease, or READY after a reaper took an expired lease back
    (``attempt_lost``; a fresh or retried step is not), and the attempt's Job still exists.
    """
    if step.attempt < 1:
        return False
    if step.state == StepState.RUNNING:
        if step.lease_expires_at is not None and step.lease_expires_at > now:
            return False  # a live lease: someone follows it now
    elif step.state != StepState.READY or not step.attempt_lost:
        return False
    runner = ctx.runner  # asked last: a protocol check costs more than the step's columns
    if not isinstance(runner, FollowingRunner):
        return False
    try:
        return runner.exists(step.build_id, step.name, step.attempt)
    except BuildfarmError as exc:
        log.warning("step %s: cannot tell whether its Job exists (%s); not adopting", step.id, exc)
        return False


def requeue_lost(ctx: FarmContext, step_id: int, attempt: int, owner: str | None, why: str) -> bool:
    """Put a running step whose pod vanished back to ready (if still as seen) and send it again."""
    with ctx.db.session() as session:
        result = session.execute(
            update(Step)
            .where(
                Step.id == step_id,
                Step.attempt == attempt,
                Step.state == StepState.RUNNING,
                Step.lease_owner == owner,
            )
            .values(
                state=StepState.READY,
                ready_at=utcnow(),
                lease_owner=None,
                lease_expires_at=None,
                error=f"attempt {attempt}: {why}",
                attempt_lost=True,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        kind = session.scalars(select(Build.kind).join(Step).where(Step.id == step_id)).one()
    ctx.dispatcher.run_step(step_id, attempt + 1, kind)
    return True


@dataclass
class BuilderReapReport:
    deleted_jobs: list[str] = field(default_factory=list)
    deleted_pods: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)  # running steps whose Job and pod vanished


def _keep(session: Session, identity: tuple[int, str, int] | None) -> bool:
    if identity is None:
        return False  # our labels but not our shape: nothing can follow it
    build_id, name, attempt = identity
    step = session.scalars(select(Step).where(Step.build_id == build_id, Step.name == name)).first()
    return step is not None and step.state in _LIVE and step.attempt == attempt


def reap_builders(
    ctx: FarmContext,
    node: str | None = None,
    grace_seconds: float = VANISHED_GRACE_SECONDS,
) -> BuilderReapReport:
    """Delete the builder Jobs and pods nothing will follow; send back steps whose pod vanished.

    ``node``: this worker's node at its start: its previous worker is gone, so the running steps
    it held are checked at once instead of after their lease expires.
    """
    runner = ctx.runner
    if not isinstance(runner, ListsBuilders):
        raise PermanentError("the builder reaper needs runner: kubernetes")
    report = BuilderReapReport()
    builders = runner.list_builders()
    with ctx.db.session() as session:
        doomed = [b for b in builders if not _keep(session, b.attempt)]
    for builder in doomed:
        runner.delete_builder(builder)
        (report.deleted_jobs if builder.kind == "job" else report.deleted_pods).append(builder.name)
    kept = [b for b in builders if b not in doomed]
    report.kept = sorted(b.name for b in kept if b.kind == "job") + [b.name for b in kept if b.kind == "pod"]
    alive = {b.attempt for b in kept}
    now = utcnow()
    started_before = now - dt.timedelta(seconds=grace_seconds)
    with ctx.db.session() as session:
        running = session.execute(
            select(Step.id, Step.build_id, Step.name, Step.attempt, Step.lease_owner, Step.node)
            .where(Step.state == StepState.RUNNING, Step.started_at < started_before)
            .where(or_(Step.lease_expires_at < now, Step.node == node if node else false()))
        ).all()
    for step_id, build_id, name, attempt, owner, _node in running:
        if (build_id, name, attempt) in alive:
            continue
        if requeue_lost(ctx, step_id, attempt, owner, "its builder Job and pod vanished"):
            log.warning("step %s (%s): builder pod vanished; back to ready", step_id, name)
            report.requeued.append(step_id)
    return report
