"""Notifications of finished builds (issue 17): signed webhooks and e-mail, per project or user.

The scheduler's periodic ``notify_tick`` calls :func:`tick`: it records the deliveries that
builds ended lately owe (:func:`discover`), then sends the due ones with retries and backoff
(:func:`deliver_due`).  Nothing here runs in a build's path; a receiver that is down delays
only its own messages.  Receivers check :data:`SIGNATURE_HEADER` with :func:`sign`.
"""

from __future__ import annotations

import datetime as dt

from buildfarm.engine.context import FarmContext
from buildfarm.model.settings import Settings
from buildfarm.notify.deliver import dashboard_url, deliver_due
from buildfarm.notify.events import build_event, discover
from buildfarm.notify.send import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "build_event",
    "check_notifications",
    "dashboard_url",
    "deliver_due",
    "discover",
    "sign",
    "tick",
]


def tick(ctx: FarmContext, now: dt.datetime) -> dict[str, int]:
    """Record what finished builds owe, then deliver what is due; counts by outcome."""
    if not ctx.settings.notify.targets:
        return {}
    added = discover(ctx, now)
    return {"new": added, **deliver_due(ctx, now)}


def check_notifications(settings: Settings) -> None:
    """Unique simple names, a channel each, a scope each: one clear line at start otherwise."""
    from buildfarm.model import names
    from buildfarm.model.errors import PermanentError

    seen: set[str] = set()
    for target in settings.notify.targets:
        names.check_simple_name(target.name, "notification")
        if target.name in seen:
            raise PermanentError(f"two notifications are named {target.name!r}")
        seen.add(target.name)
        if not target.webhook and not target.email:
            raise PermanentError(f"notification {target.name}: give a webhook, an email list, or both")
        if target.project is None and target.user is None:
            raise PermanentError(f"notification {target.name}: give a project, a user, or both")
