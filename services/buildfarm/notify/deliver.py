"""Delivering owed notifications, with retries and backoff, within a bounded tick.

Each due row is claimed by one conditional UPDATE that counts the attempt and pushes its next
attempt past the send timeout: a second tick (or a redelivered message) skips it, and a
scheduler killed mid-send leaves it to be tried again then.  A temporary failure waits
``notify_retry_seconds`` doubled per attempt; a permanent one (HTTP 4xx, SMTP 5xx, no SMTP
server configured) or the last attempt marks the row failed.  A tick stops claiming after
``TICK_BUDGET_SECONDS``, so slow receivers never hold the scheduler's control queue long.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from sqlalchemy import select, update

from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError, PermanentError
from buildfarm.model.settings import NotifyConfig, Settings
from buildfarm.notify.send import send_email, send_webhook
from buildfarm.state.models import Build, Notification, NotificationState, Step, StepState, utcnow

log = logging.getLogger(__name__)

TICK_BUDGET_SECONDS = 20.0
"""A tick claims no new delivery after this long (each send is bounded by notify_timeout_seconds)."""
TICK_BATCH = 50
"""Rows read per tick; the rest wait for the next tick, seconds later."""


def dashboard_url(settings: Settings, build_id: int) -> str:
    base = (settings.notify.dashboard_url or settings.api.url).rstrip("/")
    return f"{base}/ui/builds/{build_id}"


def payload(ctx: FarmContext, row: Notification) -> dict[str, Any]:
    with ctx.db.session() as session:
        build = session.get(Build, row.build_id)
        if build is None:
            raise PermanentError(f"build {row.build_id} no longer exists")
        failed = session.scalars(
            select(Step.name)
            .where(Step.build_id == build.id, Step.state == StepState.FAILED)
            .order_by(Step.name)
        ).all()
        return {
            "event": row.event,
            "build": {
                "id": build.id,
                "project": build.project,
                "branch": build.branch,
                "kind": build.kind,
                "user": build.user,
                "state": build.state,
                "error": build.error,
                "created_at": build.created_at.isoformat(),
                "finished_at": build.finished_at.isoformat() if build.finished_at else None,
                "published_url": build.published_url,
                "url": dashboard_url(ctx.settings, build.id),
            },
            "failed_steps": list(failed),
        }


def _claim(ctx: FarmContext, row: Notification, now: dt.datetime) -> bool:
    hold = now + dt.timedelta(seconds=ctx.settings.notify.timeout_seconds * 3 + 30)
    with ctx.db.session() as session:
        claimed = session.execute(
            update(Notification)
            .where(
                Notification.id == row.id,
                Notification.state == NotificationState.PENDING,
                Notification.attempts == row.attempts,
                Notification.next_attempt_at <= now,
            )
            .values(attempts=row.attempts + 1, next_attempt_at=hold)
        )
        return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]


def _settle(ctx: FarmContext, row_id: int, attempt: int, error: BuildfarmError | None) -> None:
    now = utcnow()
    values: dict[str, Any]
    if error is None:
        values = {"state": NotificationState.DELIVERED, "delivered_at": now, "error": None}
    elif isinstance(error, PermanentError) or attempt >= ctx.settings.notify.attempts:
        values = {"state": NotificationState.FAILED, "error": str(error)}
    else:
        pause = ctx.settings.notify.retry_seconds * 2 ** (attempt - 1)
        values = {"next_attempt_at": now + dt.timedelta(seconds=pause), "error": str(error)}
    with ctx.db.session() as session:
        session.execute(
            update(Notification)
            .where(Notification.id == row_id, Notification.attempts == attempt)
            .values(**values)
        )


def send(ctx: FarmContext, target: NotifyConfig, row: Notification) -> None:
    body = payload(ctx, row)
    if row.channel == "webhook":
        send_webhook(ctx.settings, target, row.id, body)
    else:
        send_email(ctx.settings, target, body)


def deliver_due(ctx: FarmContext, now: dt.datetime) -> dict[str, int]:
    """Try every due delivery once (bounded by the tick budget); counts by outcome."""
    targets = {t.name: t for t in ctx.settings.notify.targets}
    counts = {"delivered": 0, "retry": 0, "failed": 0}
    started = time.monotonic()
    with ctx.db.session() as session:
        due = session.scalars(
            select(Notification)
            .where(Notification.state == NotificationState.PENDING, Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at)
            .limit(TICK_BATCH)
        ).all()
    for row in due:
        if time.monotonic() - started > TICK_BUDGET_SECONDS:
            break
        if not _claim(ctx, row, now):
            continue
        attempt = row.attempts + 1
        error: BuildfarmError | None = None
        target = targets.get(row.target)
        try:
            if target is None:
                raise PermanentError(f"notification target {row.target!r} is no longer configured")
            send(ctx, target, row)
        except BuildfarmError as exc:
            error = exc
            log.warning(
                "notification %s (build %s, %s) attempt %d: %s",
                row.target,
                row.build_id,
                row.channel,
                attempt,
                exc,
            )
        _settle(ctx, row.id, attempt, error)
        if error is None:
            counts["delivered"] += 1
        elif isinstance(error, PermanentError) or attempt >= ctx.settings.notify.attempts:
            counts["failed"] += 1
        else:
            counts["retry"] += 1
    return counts
