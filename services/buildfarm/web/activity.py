"""What nodes did lately: busy time per node over a window, for the nodes page."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select

from buildfarm.engine.context import FarmContext
from buildfarm.state.models import Step


def busy_seconds(ctx: FarmContext, now: dt.datetime, hours: float) -> dict[str, float]:
    """Seconds each node spent on steps within the last ``hours`` (running ones until now)."""
    since = now - dt.timedelta(hours=hours)
    busy: dict[str, float] = {}
    with ctx.db.session() as session:
        rows = session.execute(
            select(Step.node, Step.started_at, Step.finished_at).where(
                Step.node.is_not(None),
                Step.reused_from.is_(None),
                Step.started_at.is_not(None),
                or_(Step.finished_at.is_(None), Step.finished_at >= since),
            )
        )
        for node, started, finished in rows:
            if started is None:
                continue
            start = max(started, since)
            end = min(finished or now, now)
            if end > start:
                busy[str(node)] = busy.get(str(node), 0.0) + (end - start).total_seconds()
    return busy
