"""Scheduled (nightly) builds: cron slots, and starting each slot's build exactly once.

The scheduler (celery beat, one replica) calls :func:`tick` every minute with the time.  For
every configured schedule, the most recent slot at or before that time is started if no run
of that schedule has been recorded for it or a later slot.  The database is the truth, not
beat's schedule file:

* a run is *claimed* by inserting the row (schedule, slot) under a unique constraint, so of
  two schedulers, or a tick delivered twice, exactly one starts the build;
* a scheduler that was down for days starts only the latest missed slot when it comes back
  (one catch-up run, not one per missed slot);
* a schedule's first tick starts nothing: it records the slot it found as a baseline, and
  the schedule first runs at its next slot (adding a schedule never back-fills the past);
* a start that fails for a temporary reason (git or a service the farm needs is down: a
  ``TemporaryError``) is tried again after ``schedule_retry_seconds``, doubled each time, at most
  ``schedule_start_attempts`` times and never at or past the schedule's next slot (that slot
  then simply runs); a permanent error (a manifest that cannot be read, an unknown project, a
  user without the role) is recorded once on the slot's row.  ``buildfarm schedule list``
  shows either; the other schedules of the tick are not affected;
* a claim left by a scheduler that died while starting it (neither build nor error after
  ``schedule_start_timeout_seconds``) is taken over by the next attempt, by one conditional
  UPDATE on the row's attempt number, so of two tickers exactly one wins.

Each slot gets at most one build, however its attempts end: the build carries its schedule
and slot (``<schedule>@<slot>``) under a unique constraint.  A new attempt first looks for a
build an earlier one submitted (it died before recording it) and records that instead of
submitting again; an attempt overtaken while slow finds its insert refused; and only the newest
attempt of a run may record its outcome.

Cron expressions are Celery's (``celery.schedules.crontab``, 5 fields, UTC): a day must match
both the day-of-month and the day-of-week fields, as in Celery beat (classic cron takes either
when both are restricted); day-of-week 0 is Sunday, names (``mon-fri``) work, 7 does not.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from celery.schedules import crontab
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from buildfarm import accounts
from buildfarm.accounts import policy
from buildfarm.engine.context import FarmContext
from buildfarm.engine.fetch import checkout
from buildfarm.engine.submit import submit_build
from buildfarm.model import names
from buildfarm.model.errors import (
    BuildfarmError,
    ManifestError,
    PermanentError,
    TemporaryError,
)
from buildfarm.model.manifest import Manifest, load_manifest, parse_manifest
from buildfarm.model.settinggroups import ScheduleSettings
from buildfarm.model.settings import ScheduleConfig
from buildfarm.model.urlpolicy import redact_url
from buildfarm.state.models import Build, ScheduleRun
from buildfarm_client.models import ScheduleOut

log = logging.getLogger(__name__)

CRON_FIELDS = 5
SEARCH_DAYS = 8 * 366 + 1
"""How far a slot is looked for: every valid expression (29 February included) has one in 8 years."""
STORED_MANIFESTS = "schedules"
"""A schedule without ``git`` names a manifest file; a relative path is read below <state dir>/schedules."""
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression (UTC, minute resolution)."""

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    def _day_matches(self, day: dt.date) -> bool:
        return day.month in self.months and day.day in self.days and day.isoweekday() % 7 in self.weekdays

    def next_after(self, after: dt.datetime) -> dt.datetime | None:
        """The first slot strictly after ``after``; None if there is none within 8 years."""
        start = _minute(after) + dt.timedelta(minutes=1)
        for offset in range(SEARCH_DAYS):
            day = start.date() + dt.timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for hour in self.hours:
                for minute in self.minutes:
                    slot = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
                    if slot >= start:
                        return slot
        return None

    def last_at_or_before(self, now: dt.datetime) -> dt.datetime | None:
        """The most recent slot at or before ``now``; None if there is none within 8 years."""
        end = _minute(now)
        for offset in range(SEARCH_DAYS):
            day = end.date() - dt.timedelta(days=offset)
            if not self._day_matches(day):
                continue
            for hour in reversed(self.hours):
                for minute in reversed(self.minutes):
                    slot = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
                    if slot <= end:
                        return slot
        return None


def _minute(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError("schedules work on timezone-aware datetimes")
    return moment.astimezone(dt.UTC).replace(second=0, microsecond=0)


def parse_cron(expression: str, what: str = "cron") -> Cron:
    """Parse with Celery's crontab (the same rules beat applies); one clear line if it is wrong."""
    fields = expression.split()
    if len(fields) != CRON_FIELDS:
        raise PermanentError(
            f"{what}: {expression!r} is not a cron expression "
            "(5 fields: minute hour day-of-month month day-of-week, UTC)"
        )
    try:
        spec = crontab.from_string(" ".join(fields))
    except ValueError as exc:
        raise PermanentError(f"{what}: {expression!r}: {exc}") from exc
    return Cron(
        expression=" ".join(fields),
        minutes=tuple(sorted(spec.minute)),
        hours=tuple(sorted(spec.hour)),
        days=frozenset(spec.day_of_month),
        months=frozenset(spec.month_of_year),
        weekdays=frozenset(spec.day_of_week),
    )


def next_run(cron: Cron | str, after: dt.datetime) -> dt.datetime | None:
    """The first slot of ``cron`` strictly after ``after`` (UTC)."""
    return (cron if isinstance(cron, Cron) else parse_cron(cron)).next_after(after)


def schedule_cron(settings: ScheduleSettings, schedule: ScheduleConfig) -> Cron:
    """The schedule's own cron, or the farm's ``nightly_schedule`` when it gives none."""
    expression = schedule.cron or settings.nightly
    if not expression:
        raise PermanentError(f"schedule {schedule.name}: no cron (and setting nightly_schedule is empty)")
    return parse_cron(expression, f"schedule {schedule.name}: cron")


def check_schedules(settings: ScheduleSettings) -> None:
    """Every schedule has a valid name, a unique one, and a cron; one line for the first that does not."""
    seen: set[str] = set()
    for schedule in settings.builds:
        names.check_simple_name(schedule.name, "schedule")
        if schedule.name in seen:
            raise PermanentError(f"two schedules are named {schedule.name!r}")
        seen.add(schedule.name)
        names.check_simple_name(schedule.user, f"schedule {schedule.name}: user")
        schedule_cron(settings, schedule)


# -- the tick ------------------------------------------------------------------------------


def tick(ctx: FarmContext, now: dt.datetime) -> list[int]:
    """Start the due slot of every schedule (once, whoever else ticks); the build ids started."""
    started: list[int] = []
    if not ctx.settings.schedules.builds:
        return started
    with ctx.db.session() as session:  # one read a minute, whatever the number of schedules
        newest = (
            select(ScheduleRun.schedule, func.max(ScheduleRun.slot).label("slot"))
            .group_by(ScheduleRun.schedule)
            .subquery()
        )
        rows = session.scalars(
            select(ScheduleRun).join(
                newest, and_(ScheduleRun.schedule == newest.c.schedule, ScheduleRun.slot == newest.c.slot)
            )
        )
        latest: dict[str, ScheduleRun] = {run.schedule: run for run in rows}
    for schedule in ctx.settings.schedules.builds:
        try:
            build_id = _tick_one(ctx, schedule, now, latest.get(schedule.name))
        except PermanentError as exc:  # a configuration mistake of this schedule only
            log.warning("schedule %s: %s", schedule.name, exc)
            continue
        if build_id is not None:
            started.append(build_id)
    return started


def _tick_one(
    ctx: FarmContext, schedule: ScheduleConfig, now: dt.datetime, latest: ScheduleRun | None
) -> int | None:
    """Start this schedule's due slot if ``latest`` (its newest run) is older, or start
    ``latest`` again if its retry is due or its scheduler died while starting it."""
    cron = schedule_cron(ctx.settings.schedules, schedule)
    slot = cron.last_at_or_before(now)
    if slot is None:
        raise PermanentError(f"cron {cron.expression!r} has no slot")
    if latest is None:
        if _claim(ctx, schedule.name, slot, now, baseline=True) is not None:
            log.info("schedule %s: first seen; it first runs at its next slot", schedule.name)
        return None
    if slot > latest.slot:
        run_id = _claim(ctx, schedule.name, slot, now, baseline=False)
        if run_id is None:
            return None
        return _start_run(ctx, schedule, cron, _Attempt(run_id, slot, 1), now)
    if (
        slot == latest.slot
        and _due_again(ctx.settings.schedules, latest, now)
        and _take_over(ctx, latest, now)
    ):
        return _start_run(ctx, schedule, cron, _Attempt(latest.id, slot, latest.attempt + 1), now)
    return None


@dataclass(frozen=True)
class _Attempt:
    """One attempt to start a run: only the newest attempt of a run may record its outcome."""

    run_id: int
    slot: dt.datetime
    number: int


def _claim(ctx: FarmContext, name: str, slot: dt.datetime, now: dt.datetime, *, baseline: bool) -> int | None:
    """Insert (name, slot) unless it exists: the run's id for the one caller that inserted it."""
    values = {"schedule": name, "slot": slot, "claimed_at": now, "baseline": baseline}
    values["attempt"] = 0 if baseline else 1
    with ctx.db.session() as session:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            statement: Any = postgresql.insert(ScheduleRun).values(values).on_conflict_do_nothing()
        elif dialect == "sqlite":
            statement = sqlite.insert(ScheduleRun).values(values).on_conflict_do_nothing()
        else:
            raise PermanentError(f"schedules need PostgreSQL or SQLite, not {dialect}")
        return session.execute(statement.returning(ScheduleRun.id)).scalar()


def _due_again(settings: ScheduleSettings, run: ScheduleRun, now: dt.datetime) -> bool:
    """Whether ``run`` (its schedule's newest) is to be started again now: its retry is due, or
    its claim is older than ``schedule_start_timeout_seconds`` with neither build nor error."""
    if run.baseline or run.build_id is not None:
        return False
    if run.retry_at is not None:
        return run.retry_at <= now
    stale = now - dt.timedelta(seconds=settings.start_timeout_seconds)
    return run.error is None and run.claimed_at <= stale


def _take_over(ctx: FarmContext, run: ScheduleRun, now: dt.datetime) -> bool:
    """Claim the next attempt of ``run``: True for the one ticker whose conditional UPDATE won
    (the attempt it saw is still the run's, and the run still has no build)."""
    stale = now - dt.timedelta(seconds=ctx.settings.schedules.start_timeout_seconds)
    with ctx.db.session() as session:
        taken = session.execute(
            update(ScheduleRun)
            .where(
                ScheduleRun.id == run.id,
                ScheduleRun.attempt == run.attempt,  # nobody took this attempt over first
                ScheduleRun.baseline.is_(False),
                ScheduleRun.build_id.is_(None),
                or_(  # _due_again, on the row as it is now
                    ScheduleRun.retry_at <= now,
                    and_(
                        ScheduleRun.retry_at.is_(None),
                        ScheduleRun.error.is_(None),
                        ScheduleRun.claimed_at <= stale,
                    ),
                ),
            )
            .values(attempt=run.attempt + 1, claimed_at=now, error=None, retry_at=None)
        )
        won: bool = taken.rowcount == 1  # type: ignore[attr-defined]
    if won:
        why = f"retry due {_iso(run.retry_at)}" if run.retry_at else "the last one stopped while starting"
        log.warning(
            "schedule %s: slot %s: attempt %d (%s)", run.schedule, run.slot.isoformat(), run.attempt + 1, why
        )
    return won


def _start_run(
    ctx: FarmContext, schedule: ScheduleConfig, cron: Cron, attempt: _Attempt, now: dt.datetime
) -> int | None:
    """Start the run's build (or find the one an earlier attempt submitted); record the outcome:
    the build, a retry (temporary failure, attempts left, before the next slot), or the error."""
    limit = ctx.settings.schedules.start_attempts
    where = f"schedule {schedule.name}: slot {attempt.slot.isoformat()}"
    if attempt.number > 1:
        found = _build_of(ctx, schedule.name, attempt.slot)
        if found is not None:  # the attempt that submitted it stopped before recording it
            _record(ctx, attempt, build_id=found)
            log.warning("%s: build %s, submitted by an earlier attempt, recorded", where, found)
            return None
        if attempt.number > limit:  # the last attempt allowed was interrupted
            stopped = f"not started: the scheduler stopped during attempt {limit} of {limit}"
            _record(ctx, attempt, error=stopped)
            return None
    try:
        build_id = _submit_once(ctx, schedule, attempt.slot)
    except TemporaryError as exc:
        message = _one_line(exc)
        pause = max(exc.retry_after, ctx.settings.schedules.retry_seconds * 2 ** (attempt.number - 1))
        retry_at = now + dt.timedelta(seconds=pause)
        upcoming = cron.next_after(attempt.slot)
        if attempt.number < limit and (upcoming is None or retry_at < upcoming):
            _record(ctx, attempt, error=message, retry_at=retry_at)
            log.warning(
                "%s: attempt %d of %d failed, next at %s: %s",
                *(where, attempt.number, limit, retry_at.isoformat(), message),
            )
        else:
            _record(ctx, attempt, error=message)
            log.warning("%s: attempt %d of %d failed, not retried: %s", where, attempt.number, limit, message)
        return None
    except BuildfarmError as exc:  # permanent: the same start would fail the same way
        message = _one_line(exc)
        _record(ctx, attempt, error=message)
        log.warning("%s: not started: %s", where, message)
        return None
    _record(ctx, attempt, build_id=build_id)
    log.info("%s: started build %s", where, build_id)
    return build_id


def _submit_once(ctx: FarmContext, schedule: ScheduleConfig, slot: dt.datetime) -> int:
    """Submit the slot's build; if another attempt of the slot (one overtaken while slow)
    submitted it meanwhile, the database refuses a second and that one is the slot's build."""
    try:
        return start_schedule(ctx, schedule, slot)
    except IntegrityError:
        found = _build_of(ctx, schedule.name, slot)
        if found is None:
            raise
        return found


def _slot_key(name: str, slot: dt.datetime) -> str:
    """``Build.schedule_slot`` of the build of schedule ``name`` at ``slot``."""
    return f"{name}@{_iso(slot)}"


def _build_of(ctx: FarmContext, name: str, slot: dt.datetime) -> int | None:
    with ctx.db.session() as session:
        return session.scalar(select(Build.id).where(Build.schedule_slot == _slot_key(name, slot)))


def _record(
    ctx: FarmContext,
    attempt: _Attempt,
    *,
    build_id: int | None = None,
    error: str | None = None,
    retry_at: dt.datetime | None = None,
) -> None:
    """Record an attempt's outcome, unless a newer attempt took the run over meanwhile."""
    with ctx.db.session() as session:
        session.execute(
            update(ScheduleRun)
            .where(
                ScheduleRun.id == attempt.run_id,
                ScheduleRun.attempt == attempt.number,
                ScheduleRun.build_id.is_(None),
            )
            .values(build_id=build_id, error=error, retry_at=retry_at)
        )


def _one_line(exc: BuildfarmError) -> str:
    return " ".join(str(exc).split())[:MAX_ERROR_CHARS] or type(exc).__name__


# -- starting one scheduled build ----------------------------------------------------------


def start_schedule(ctx: FarmContext, schedule: ScheduleConfig, slot: dt.datetime | None = None) -> int:
    """Fetch the schedule's manifest, check its user may build there, submit; the build id.

    The build is tied to ``slot``, the one it starts: a slot never has two builds.
    """
    principal = accounts.principal_for(ctx, schedule.user)
    with scheduled_manifest(ctx, schedule) as (manifest, root):
        policy.require_submit(ctx, principal, manifest, "run scheduled")
        key = _slot_key(schedule.name, slot) if slot is not None else None
        return submit_build(ctx, manifest, root, schedule.user, schedule_slot=key)


@contextmanager
def scheduled_manifest(ctx: FarmContext, schedule: ScheduleConfig) -> Iterator[tuple[Manifest, Path]]:
    """The schedule's manifest, with the schedule's project, branch and kind, and the tree its
    ``path`` packages are read from (a fresh shallow clone of ``git`` at ``ref``, removed after)."""
    if schedule.git is None:
        path = Path(schedule.manifest)
        if not path.is_absolute():
            path = ctx.settings.state_dir / STORED_MANIFESTS / path
        yield _for_schedule(schedule, load_manifest(path), str(path)), path.parent.resolve()
        return
    ref = schedule.ref or "HEAD"
    where = f"{redact_url(schedule.git)}@{ref}:{schedule.manifest}"
    with TemporaryDirectory(dir=ctx.work_root, prefix="schedule-") as scratch:
        clone = Path(scratch) / "tree"
        checkout(schedule.git, ref, clone, f"schedule {schedule.name}", ctx.settings.fetch.url_policy)
        path = (clone / schedule.manifest).resolve()
        if not path.is_relative_to(clone.resolve()):
            raise ManifestError(f"{where}: the manifest path escapes the tree")
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            raise ManifestError(str(exc).replace(str(path), where)) from exc
        yield _for_schedule(schedule, manifest, where), path.parent


def _for_schedule(schedule: ScheduleConfig, manifest: Manifest, source: str) -> Manifest:
    """The schedule decides project, branch and kind: one manifest can serve several branches."""
    data = manifest.model_dump(mode="json")
    data.update(project=schedule.project, branch=schedule.branch, kind=schedule.kind)
    return parse_manifest(data, f"schedule {schedule.name} ({source})")


# -- listing -------------------------------------------------------------------------------


def list_schedules(ctx: FarmContext, now: dt.datetime) -> list[ScheduleOut]:
    """Each configured schedule, when it runs next and what its last run did (the API's answer)."""
    views: list[ScheduleOut] = []
    with ctx.db.session() as session:
        for schedule in ctx.settings.schedules.builds:
            error: str | None = None
            upcoming: dt.datetime | None = None
            try:
                upcoming = schedule_cron(ctx.settings.schedules, schedule).next_after(now)
            except PermanentError as exc:
                error = str(exc)
            last = session.scalars(
                select(ScheduleRun)
                .where(ScheduleRun.schedule == schedule.name, ScheduleRun.baseline.is_(False))
                .order_by(ScheduleRun.slot.desc())
                .limit(1)
            ).first()
            state: str | None = None
            if last is not None and last.build_id is not None:
                build = session.get(Build, last.build_id)
                state = build.state if build is not None else "expired"
            elif last is not None:
                state = "retrying" if last.retry_at else "failed" if last.error else "starting"
            views.append(
                ScheduleOut(
                    name=schedule.name,
                    project=schedule.project,
                    branch=schedule.branch,
                    kind=schedule.kind,
                    user=schedule.user,
                    cron=schedule.cron or ctx.settings.schedules.nightly,
                    source=_describe_source(schedule),
                    next_run=_iso(upcoming),
                    last_slot=_iso(last.slot) if last is not None else None,
                    last_build=last.build_id if last is not None else None,
                    last_state=state,
                    last_error=error or (last.error if last is not None else None),
                    last_attempt=last.attempt if last is not None else None,
                    max_attempts=ctx.settings.schedules.start_attempts,
                    retry_at=_iso(last.retry_at) if last is not None else None,
                )
            )
    return views


def _describe_source(schedule: ScheduleConfig) -> str:
    if schedule.git is None:
        return f"farm:{schedule.manifest}"
    return f"{redact_url(schedule.git)}@{schedule.ref or 'HEAD'}:{schedule.manifest}"


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds") if moment is not None else None
