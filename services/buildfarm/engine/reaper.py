"""Put lost work back in play: expired leases, ready steps nobody took, stuck publications,
staging repositories a finished build could not drop while the repository was down.

Run every ``reaper_seconds`` by the one scheduler (celery beat).  Everything it does is a
conditional UPDATE, so two reapers (a second beat started by mistake) cannot double anything.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update

from buildfarm.engine.advance import drop_staging
from buildfarm.engine.context import FarmContext
from buildfarm.state.models import TERMINAL_BUILD_STATES, Build, BuildState, Step, StepState, utcnow

log = logging.getLogger(__name__)

STAGING_DROPS_PER_ROUND = 10
"""Leftover staging repositories dropped per round, so a long repository outage that left many
behind costs each round a bounded number of requests."""


@dataclass
class ReapReport:
    expired: list[int] = field(default_factory=list)  # steps whose node went silent
    redispatched: list[int] = field(default_factory=list)  # ready steps sent to the queue again
    builds_advanced: list[int] = field(default_factory=list)
    staging_dropped: list[int] = field(default_factory=list)  # finished builds' leftover staging


def reap(ctx: FarmContext) -> ReapReport:
    report = ReapReport()
    now = utcnow()
    with ctx.db.session() as session:
        expired = session.scalars(
            select(Step).where(Step.state == StepState.RUNNING, Step.lease_expires_at < now)
        ).all()
        for step in expired:
            back = session.execute(
                update(Step)
                .where(
                    Step.id == step.id,
                    Step.state == StepState.RUNNING,
                    Step.attempt == step.attempt,
                    Step.lease_expires_at < now,
                )
                .values(
                    state=StepState.READY,
                    ready_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    error=f"attempt {step.attempt} on {step.node} lost its lease",
                )
            )
            if back.rowcount == 1:  # type: ignore[attr-defined]
                log.warning("step %s (%s): node %s went silent; back to ready", step.id, step.name, step.node)
                report.expired.append(step.id)
        stale = now - dt.timedelta(seconds=ctx.settings.redispatch_seconds)
        waiting = session.execute(
            select(Step.id, Step.attempt)
            .join(Build)
            .where(Step.state == StepState.READY, Step.ready_at < stale, Build.state == BuildState.RUNNING)
        ).all()
        for step_id, _attempt in waiting:
            session.execute(update(Step).where(Step.id == step_id).values(ready_at=now))
        stuck = session.scalars(
            select(Build.id)
            .where(Build.state.in_([BuildState.RUNNING, BuildState.PUBLISHING]))
            .where(~Build.steps.any(Step.state.in_([StepState.READY, StepState.RUNNING])))
        ).all()
        leftovers = session.scalars(
            select(Build.id)
            .where(Build.state.in_(TERMINAL_BUILD_STATES), Build.staging_source.is_not(None))
            .order_by(Build.id)
            .limit(STAGING_DROPS_PER_ROUND)
        ).all()
    for step_id in report.expired:
        with ctx.db.session() as session:
            attempt = session.get_one(Step, step_id).attempt
        ctx.dispatcher.run_step(step_id, attempt + 1)
    for step_id, attempt in waiting:
        ctx.dispatcher.run_step(step_id, attempt + 1)
        report.redispatched.append(step_id)
    for build_id in stuck:
        ctx.dispatcher.advance(build_id)
        report.builds_advanced.append(build_id)
    for build_id in leftovers:
        if not drop_staging(ctx, build_id):
            break  # the repository is down: the others would wait on it too
        report.staging_dropped.append(build_id)
    return report
