"""Recording how each periodic run (retention sweep, backup) ended, for metrics and the dashboard.

Written by the Celery task that ran it, after the run: a run that crashed the process records
nothing, and its missing success shows as an old ``buildfarm_task_last_success_timestamp_seconds``.
"""

from __future__ import annotations

import datetime as dt

from buildfarm.state.db import Database
from buildfarm.state.models import TaskRun, utcnow

DETAIL_MAX = 2000


def record_task_run(
    db: Database, task: str, started_at: dt.datetime, *, ok: bool, moved_bytes: int, detail: str
) -> None:
    with db.session() as session:
        session.add(
            TaskRun(
                task=task,
                started_at=started_at,
                finished_at=utcnow(),
                ok=ok,
                bytes=moved_bytes,
                detail=detail[:DETAIL_MAX],
            )
        )
