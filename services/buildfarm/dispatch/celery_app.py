"""The Celery application, its queues and the settings that keep long builds safe.

Queues:

* ``builds`` — every node consumes it: "run step N" messages, first node free takes one, of
  the highest priority class queued (release > on-demand > nightly > personal: setting
  ``build_priorities``; kombu keeps one Redis list per priority);
* ``node.<name>`` — one per node, for work only that node may take: the tickets of steps that
  require labels it has (:mod:`buildfarm.engine.routing`);
* ``control`` — only the scheduler consumes it: "advance build N", the periodic reaper, the
  schedules' tick, the retention sweep and the backup run.  Making a build environment (a
  submit found none, or the scheduled refresh) takes minutes of mmdebstrap: it goes to
  ``builds``, where a node makes it in the machine's cache.
  Keeping them off the node queues means a farm whose nodes are all busy building still
  releases, publishes and reclaims promptly.

Celery tasks are short and idempotent: a duplicate "run step" loses the lease claim and returns
at once.  The build itself runs inside the ``run_step`` task, guarded by the database lease, not
by Celery's visibility timeout, which is set longer than any step so Redis never redelivers a
running build; a node that dies is detected by its lease expiring (``lease_seconds``).

Beat (exactly one scheduler) sends the periodic messages.  Scheduled builds do not rely on
beat's own schedule file: beat only sends a tick every minute, and the tick decides from the
database which slot is due (:mod:`buildfarm.schedules.slots`), so a lost, duplicated or
replayed tick, or a second beat, never starts a slot twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.schedules import crontab
from kombu.exceptions import OperationalError

from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.settings import DEFAULT_BUILD_PRIORITIES, MAX_PRIORITY, Settings
from buildfarm.notify import check_notifications
from buildfarm.schedules import check_schedules, parse_cron

BUILD_QUEUE = "builds"
CONTROL_QUEUE = "control"
VISIBILITY_MARGIN_SECONDS = 600
TICK_EXPIRES_SECONDS = 55
"""A tick not run within a minute is dropped: the next one does its work (the database says what is due)."""


def node_queue(node: str) -> str:
    return f"node.{node}"


def make_celery(settings: Settings) -> Celery:
    if not settings.broker.url:
        raise PermanentError(
            "no Redis configured: start the local farm (`buildfarm start`) or set BUILDFARM_REDIS_URL"
        )
    app = Celery("buildfarm", broker=settings.broker.url, include=["buildfarm.dispatch.tasks"])
    visibility = settings.steps.timeout_seconds + VISIBILITY_MARGIN_SECONDS
    conf: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": BUILD_QUEUE,
        "task_routes": {
            "buildfarm.run_step": {"queue": BUILD_QUEUE},
            # minutes of mmdebstrap: on a node, never in the control queue's way
            "buildfarm.prepare_environment": {"queue": BUILD_QUEUE},
            "buildfarm.env_refresh": {"queue": BUILD_QUEUE},
            "buildfarm.advance_build": {"queue": CONTROL_QUEUE},
            "buildfarm.reap": {"queue": CONTROL_QUEUE},
            "buildfarm.schedules_tick": {"queue": CONTROL_QUEUE},
            "buildfarm.retention_sweep": {"queue": CONTROL_QUEUE},
            "buildfarm.backup_run": {"queue": CONTROL_QUEUE},
            "buildfarm.notify_tick": {"queue": CONTROL_QUEUE},
        },
        "broker_transport_options": {
            "visibility_timeout": visibility,
            # a killed worker's unacked messages come back in ~10 s instead of ~75 s
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 0,
            # One list per priority (kombu's Redis priorities): a free node takes the queued step
            # of the highest class first (setting build_priorities); FIFO within a class.
            "priority_steps": list(range(MAX_PRIORITY + 1)),
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": beat_schedule(settings),
    }
    app.conf.update(conf)
    return app


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The scheduler's periodic messages; a bad schedule or cron stops the process with one line."""
    check_schedules(settings.schedules)
    check_notifications(settings)
    entries: dict[str, Any] = {
        "reap": {
            "task": "buildfarm.reap",
            "schedule": settings.steps.reaper_seconds,
            "options": {"expires": 60},
        },
        "schedules": {
            "task": "buildfarm.schedules_tick",
            "schedule": crontab(),  # every minute, on the minute: a slot starts within seconds
            "options": {"expires": TICK_EXPIRES_SECONDS},
        },
    }
    if settings.notify.targets:  # finished builds' webhooks and mails, sent after the build (issue 17)
        entries["notify"] = {
            "task": "buildfarm.notify_tick",
            "schedule": settings.notify.tick_seconds,
            "options": {"expires": max(settings.notify.tick_seconds, 30.0)},
        }
    for name, task, expression, setting in (
        ("retention", "buildfarm.retention_sweep", settings.retention.schedule, "retention_schedule"),
        ("backup", "buildfarm.backup_run", settings.backup.schedule, "backup_schedule"),
        # the sbuild environment from the mirror again (security updates), then pruned (issue 15)
        ("env_refresh", "buildfarm.env_refresh", settings.buildenv.refresh_schedule, "env_refresh_schedule"),
    ):
        if expression:  # empty: not scheduled (run it by hand)
            cron = parse_cron(expression, f"setting {setting}")
            entries[name] = {"task": task, "schedule": crontab.from_string(cron.expression)}
    return entries


class CeleryDispatcher:
    """The engine's Dispatcher on Celery."""

    def __init__(self, app: Celery, priorities: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.priorities = dict(priorities or DEFAULT_BUILD_PRIORITIES)

    def advance(self, build_id: int) -> None:
        self._send("buildfarm.advance_build", [build_id], CONTROL_QUEUE, None)

    def run_step(self, step_id: int, attempt: int, kind: str, node: str | None = None) -> None:
        priority = self.priorities.get(kind, MAX_PRIORITY)
        message_id = f"step-{step_id}-attempt-{attempt}"
        queue = BUILD_QUEUE if node is None else node_queue(node)
        self._send("buildfarm.run_step", [step_id], queue, message_id, priority)

    def prepare_environment(self) -> None:
        # the first class (0): before any step, which would need the environment too
        self._send("buildfarm.prepare_environment", [], BUILD_QUEUE, None, 0)

    def check(self) -> None:
        """Reach the broker; and leave what sending needs made (a connected producer in the
        app's pool, celery's result backend object, which celery finds by scanning every installed
        distribution's entry points): a process's first message paid 0.1-0.15 s for them, and
        the API's start checks so that its first submit does not (:func:`buildfarm.api.__main__.warm_up`)."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
            with self.app.producer_or_acquire() as producer:
                producer.channel  # noqa: B018 - a connected channel, made once and kept in the pool
        except (OperationalError, OSError) as exc:
            raise ServiceUnavailableError(f"cannot reach the broker {_redacted(self.app)}: {exc}") from exc
        self.app.backend  # noqa: B018 - made once (celery keeps it), not at the first message

    def _send(self, task: str, args: list[int], queue: str, task_id: str | None, priority: int = 0) -> None:
        try:
            self.app.send_task(
                task,
                args=args,
                queue=queue,
                task_id=task_id,
                priority=priority,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )
        except (OperationalError, OSError) as exc:
            raise ServiceUnavailableError(f"cannot reach the broker {_redacted(self.app)}: {exc}") from exc


def _redacted(app: Celery) -> str:
    """The broker URL without its password (if it has one)."""
    parts = urlsplit(str(app.conf.broker_url))
    if parts.password is None:
        return parts.geturl()
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
