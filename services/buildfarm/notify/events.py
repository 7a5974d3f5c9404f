"""Which finished builds each notification target hears about, recorded as rows to deliver.

Discovery reads the builds that ended within ``notify_lookback_seconds`` and inserts one
``Notification`` row per (build, target, channel) that matches; the unique key makes a replayed
or concurrent tick add nothing, so the database, not the tick, says what is owed.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from buildfarm.engine.context import FarmContext
from buildfarm.model.settings import NotifyConfig
from buildfarm.model.types import BuildKind
from buildfarm.state.models import TERMINAL_BUILD_STATES, Build, BuildState, Notification, NotificationState


def build_event(session: Session, build: Build) -> str:
    """``failed``, ``fixed`` (first success after a failure of the same line) or ``finished``."""
    if build.state == BuildState.FAILED:
        return "failed"
    if build.state != BuildState.SUCCEEDED:
        return "finished"
    line = [Build.project == build.project, Build.branch == build.branch, Build.kind == build.kind]
    if build.kind == BuildKind.PERSONAL:
        line.append(Build.user == build.user)
    previous = session.scalar(
        select(Build.state)
        .where(*line, Build.id < build.id, Build.state.in_([BuildState.SUCCEEDED, BuildState.FAILED]))
        .order_by(Build.id.desc())
        .limit(1)
    )
    return "fixed" if previous == BuildState.FAILED else "finished"


def matches(target: NotifyConfig, build: Build, event: str) -> bool:
    if target.project is not None and build.project != target.project:
        return False
    if target.user is not None:
        if build.user != target.user:
            return False
    elif build.kind == BuildKind.PERSONAL:  # a project's hook never hears of someone's personal build
        return False
    return "finished" in target.events or event in target.events


def channels(target: NotifyConfig) -> list[str]:
    return (["webhook"] if target.webhook else []) + (["email"] if target.email else [])


def discover(ctx: FarmContext, now: dt.datetime) -> int:
    """Record the deliveries owed for builds that ended lately; the number of new rows."""
    targets = ctx.settings.notify.targets
    if not targets:
        return 0
    since = now - dt.timedelta(seconds=ctx.settings.notify.lookback_seconds)
    added = 0
    with ctx.db.session() as session:
        builds = session.scalars(
            select(Build).where(Build.state.in_(TERMINAL_BUILD_STATES), Build.finished_at >= since)
        ).all()
        if not builds:
            return 0
        known = {
            (b, t, c)
            for b, t, c in session.execute(
                select(Notification.build_id, Notification.target, Notification.channel).where(
                    Notification.build_id.in_([b.id for b in builds])
                )
            )
        }
        for build in builds:
            wanted = [(t, c) for t in targets for c in channels(t) if (build.id, t.name, c) not in known]
            if not wanted:
                continue
            event = build_event(session, build)
            for target, channel in wanted:
                if matches(target, build, event):
                    session.add(
                        Notification(
                            build_id=build.id,
                            target=target.name,
                            channel=channel,
                            event=event,
                            state=NotificationState.PENDING,
                            next_attempt_at=now,
                            created_at=now,
                        )
                    )
                    added += 1
    return added
