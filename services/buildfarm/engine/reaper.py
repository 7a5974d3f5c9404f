"""Put lost work back in play: expired leases, ready steps nobody took (their tickets are
re-sent with a growing pause, and keep their age: :func:`ticket_due`), stuck publications,
builds whose submit stopped while packing their trees (:func:`~buildfarm.engine.packing.fail_abandoned`),
steps that no online node can run (failed with the reason after ``unschedulable_seconds``;
natively placed foreign ones cross-built instead after ``cross_fallback_seconds``:
:mod:`buildfarm.engine.crossfallback`),
staging repositories a finished build could not drop while the repository was down; and remove
what dead attempts left on this machine: their work directories and the sbuild chroots (~0.6 GB
each, in ``/dev/shm`` by default) of builders that were killed before they could clean up.

Run every ``reaper_seconds`` by the one scheduler (celery beat).  Everything it does is a
conditional UPDATE, so two reapers (a second beat started by mistake) cannot double anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import literal_column, or_, select, update
from sqlalchemy.orm import Session

from buildfarm.engine import routing
from buildfarm.engine.advance import drop_staging
from buildfarm.engine.context import FarmContext
from buildfarm.engine.crossfallback import fall_back_to_cross
from buildfarm.engine.packing import fail_abandoned
from buildfarm.model import names
from buildfarm.model.types import (
    TERMINAL_BUILD_STATES,
    TERMINAL_STEP_STATES,
    BuildKind,
    BuildState,
    StepState,
)
from buildfarm.runners.base import chroot_root, remove_mapped_tree
from buildfarm.state.models import Build, Step, utcnow

log = logging.getLogger(__name__)
_IS_LIVE = Step.state.in_(
    [literal_column(f"'{state.value}'") for state in (StepState.READY, StepState.RUNNING)]
)
"""A ready or running step, the states written into the statement: PostgreSQL's plan can then use
the partial index of open steps (``ix_steps_build_open``, 0019), as the advance's queries do."""

STAGING_DROPS_PER_ROUND = 10
"""Leftover staging repositories dropped per round, so a long repository outage that left many
behind costs each round a bounded number of requests."""


@dataclass
class ReapReport:
    expired: list[int] = field(default_factory=list)  # steps whose node went silent
    redispatched: list[int] = field(default_factory=list)  # ready steps whose ticket was sent again
    builds_advanced: list[int] = field(default_factory=list)
    staging_dropped: list[int] = field(default_factory=list)  # finished builds' leftover staging
    swept: list[Path] = field(default_factory=list)  # dead attempts' work directories and chroots
    unschedulable: list[int] = field(default_factory=list)  # builds of steps no online node can run
    cross_built: list[int] = field(default_factory=list)  # builds whose foreign steps lost their native node
    abandoned: list[int] = field(default_factory=list)  # builds whose submit stopped while packing


def reap(ctx: FarmContext) -> ReapReport:
    report = ReapReport()
    now = utcnow()
    report.abandoned = fail_abandoned(ctx, now)  # before they could count as stuck below
    for moved in fall_back_to_cross(ctx, now):  # before they could fail as unschedulable
        ctx.dispatcher.advance(moved.build_id)
        report.cross_built.append(moved.build_id)
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
                    attempt_lost=True,
                )
            )
            if back.rowcount == 1:  # type: ignore[attr-defined]
                log.warning("step %s (%s): node %s went silent; back to ready", step.id, step.name, step.node)
                report.expired.append(step.id)
        waiting = _tickets_due(session, ctx.settings.steps.redispatch_seconds, now)
        routes = {requires: routing.node_for(session, ctx, requires) for *_, requires in waiting}
        unschedulable = routing.fail_unschedulable(session, ctx, now)
        stuck = session.scalars(
            select(Build.id)
            .where(Build.state.in_([BuildState.RUNNING, BuildState.PUBLISHING]))
            .where(~Build.steps.any(_IS_LIVE))
        ).all()
        leftovers = session.scalars(
            select(Build.id)
            .where(Build.state.in_(TERMINAL_BUILD_STATES), Build.staging_source.is_not(None))
            .order_by(Build.id)
            .limit(STAGING_DROPS_PER_ROUND)
        ).all()
    for step_id in report.expired:
        with ctx.db.session() as session:
            step = session.get_one(Step, step_id)
            attempt, kind = step.attempt, step.build.kind
            node = routing.node_for(session, ctx, step.requires)
        ctx.dispatcher.run_step(step_id, attempt + 1, kind, node)
    for step_id, attempt, kind, requires in waiting:
        ctx.dispatcher.run_step(step_id, attempt + 1, kind, routes[requires])
        report.redispatched.append(step_id)
    for build_id in unschedulable:
        ctx.dispatcher.advance(build_id)
        report.unschedulable.append(build_id)
    for build_id in stuck:
        ctx.dispatcher.advance(build_id)
        report.builds_advanced.append(build_id)
    for build_id in leftovers:
        if not drop_staging(ctx, build_id):
            break  # the repository is down: the others would wait on it too
        report.staging_dropped.append(build_id)
    report.swept = sweep_dead_attempts(ctx)
    return report


REDISPATCH_BACKOFF_MAX = 20
"""The longest pause between two tickets re-sent for one waiting step, in ``redispatch_seconds``
(10 min at the default 30 s)."""


def ticket_due(
    ready_at: dt.datetime, ticket_at: dt.datetime | None, redispatch: float, now: dt.datetime
) -> bool:
    """Whether a step ready since ``ready_at``, whose last ticket was re-sent at ``ticket_at``
    (None: only the one sent when it became ready), gets another ticket now.

    A step waits mostly because every capable node is busy, its tickets still queued: a ticket
    re-sent each ``redispatch_seconds`` for each waiting step would pile up in the broker, one
    more per step and period.  So the pause doubles with each one (it is the time the step had
    waited when its last ticket went), from ``redispatch_seconds`` up to
    ``REDISPATCH_BACKOFF_MAX`` times it: a lost ticket is still replaced, a step waiting for
    hours costs a few tickets an hour.
    """
    last = max(ready_at, ticket_at or ready_at)
    pause = min(max(redispatch, (last - ready_at).total_seconds()), REDISPATCH_BACKOFF_MAX * redispatch)
    return (now - last).total_seconds() >= pause


def _tickets_due(
    session: Session, redispatch: float, now: dt.datetime
) -> list[tuple[int, int, BuildKind, str]]:
    """(step, attempt, build kind, requires) of the ready steps whose ticket is re-sent now;
    marks when (``ticket_at``), never touching ``ready_at``: a step keeps its age in the queue.
    Each mark is conditional, so a second reaper sends none of the same tickets."""
    stale = now - dt.timedelta(seconds=redispatch)
    rows = session.execute(
        select(Step.id, Step.attempt, Build.kind, Step.requires, Step.ready_at, Step.ticket_at)
        .join(Build)
        .where(Step.state == StepState.READY, Step.ready_at < stale, Build.state == BuildState.RUNNING)
        .where(or_(Step.ticket_at.is_(None), Step.ticket_at < stale))
        .order_by(Step.id)
    ).all()
    due: list[tuple[int, int, BuildKind, str]] = []
    for step_id, attempt, kind, requires, ready_at, ticket_at in rows:
        if ready_at is None or not ticket_due(ready_at, ticket_at, redispatch, now):
            continue
        same = Step.ticket_at.is_(None) if ticket_at is None else Step.ticket_at == ticket_at
        marked = session.execute(
            update(Step)
            .where(Step.id == step_id, Step.state == StepState.READY, Step.attempt == attempt, same)
            .values(ticket_at=now)
        )
        if marked.rowcount == 1:  # type: ignore[attr-defined]
            due.append((step_id, attempt, kind, requires))
    return due


SWEEPS_PER_ROUND = 20
"""Directories removed per round: a node that died with many attempts costs each round a bounded
amount of disk work."""
_ATTEMPT_DIR = re.compile(r"^(\d+)-(.+)-(\d+)$")  # runners.base.attempt_dirname


def _attempt_dirs(ctx: FarmContext) -> list[tuple[Path, tuple[int, str, int]]]:
    """The farm's own per-attempt directories on this machine: work directories under the work
    root, chroot parents under the farm's sbuild directory; with the attempt each belongs to."""
    found = []
    for parent in (ctx.work_root, chroot_root(ctx.settings.buildenv.sbuild_tmpdir, ctx.settings.state_dir)):
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue  # no chroot directory yet
        for path in entries:
            match = _ATTEMPT_DIR.match(path.name)
            if match and path.is_dir() and not path.is_symlink():
                found.append((path, (int(match[1]), match[2], int(match[3]))))
    return found


def _in_use(paths: list[Path]) -> set[Path]:
    """Which of ``paths`` a live process works in: its cwd, root or an open file lies below."""
    prefixes = {str(p): p for p in paths}
    used: set[Path] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        links = [f"/proc/{entry}/cwd", f"/proc/{entry}/root"]
        with contextlib.suppress(OSError):  # gone, or not ours to look at: its cwd and root still count
            links += [f"/proc/{entry}/fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            for prefix, path in prefixes.items():
                if target == prefix or target.startswith(prefix + "/"):
                    used.add(path)
    return used


def sweep_dead_attempts(ctx: FarmContext) -> list[Path]:
    """Remove the work directories and sbuild chroots of attempts that are over.

    A directory is removed only if (read in this order, so an attempt claimed meanwhile is never
    taken for a dead one) it was listed before the database said its attempt is over (the step
    moved on to a newer attempt, finished, or no longer exists) and no live process uses it (a
    cancelled builder still stopping).  A ready step's current attempt is kept: it may be adopted.
    """
    candidates = _attempt_dirs(ctx)
    if not candidates:
        return []
    with ctx.db.session() as session:
        steps = session.execute(
            select(Step.build_id, Step.name, Step.attempt, Step.state).where(
                Step.build_id.in_({build_id for _, (build_id, _, _) in candidates})
            )
        ).all()
    current = {(b, names.to_safe(n)): (a, state) for b, n, a, state in steps}
    dead = []
    for path, (build_id, safe_name, attempt) in candidates:
        step = current.get((build_id, safe_name))
        if step is None or step[0] > attempt or (step[0] == attempt and step[1] in TERMINAL_STEP_STATES):
            dead.append(path)
    if not dead:
        return []
    used = _in_use(dead)
    swept = []
    for path in [p for p in dead if p not in used][:SWEEPS_PER_ROUND]:
        remove_mapped_tree(path)  # a chroot's files belong to the builds' mapped users
        if not path.exists():
            log.info("reaper: removed %s, left by a dead attempt", path)
            swept.append(path)
        else:
            log.warning("reaper: could not remove %s, left by a dead attempt", path)
    return swept
