"""Scheduled builds with a controlled clock, on the real database layer (SQLite; PostgreSQL for races).

Builds are really submitted (git clone of a local repository, planning, source tarballs in the
store, rows in the database); ``RecordingDispatcher`` keeps the "advance" messages, so no
worker is needed.  One test drives a scheduled build to the end with dpkg-buildpackage.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from buildfarm import accounts, schedules
from buildfarm.dispatch.celery_app import make_celery
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import load_settings
from buildfarm.schedules import list_schedules, next_run, parse_cron, tick
from buildfarm.schedules import slots as schedule_slots
from buildfarm.state.models import Build, ScheduleRun
from buildfarm_cli import output
from buildfarm_cli.main import app as cli

import farmkit
from debpkgs import make_package, write_manifest
from farmkit import dispatcher, drain
from gitkit import LOOPBACK_GIT, GitServer, commit_tree
from helpers import free_port, scratch_database, wait_until

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)


def at(text_: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text_).replace(tzinfo=UTC)


def _racing_ticks(first: FarmContext, second: FarmContext, now: dt.datetime) -> list[int]:
    """Two schedulers tick at the same moment (released together): how many builds each started."""
    barrier = threading.Barrier(2)
    results: dict[str, list[int]] = {}

    def scheduler(name: str, ctx: FarmContext) -> None:
        barrier.wait()
        results[name] = tick(ctx, now)

    threads = [threading.Thread(target=scheduler, args=(n, c)) for n, c in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return sorted(len(ids) for ids in results.values())


# -- cron ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 2 * * *", "2025-03-01 01:59", "2025-03-01 02:00"),
        ("0 2 * * *", "2025-03-01 02:00", "2025-03-02 02:00"),  # strictly after
        ("0 2 * * *", "2025-12-31 23:59:59", "2026-01-01 02:00"),
        ("*/15 * * * mon-fri", "2025-03-01 10:07", "2025-03-03 00:00"),  # Saturday -> Monday
        ("30 3 1 * *", "2025-01-31 04:00", "2025-02-01 03:30"),
        ("0 0 29 2 *", "2025-03-01 00:00", "2028-02-29 00:00"),  # next leap day
        ("0 4 * * 0", "2025-03-01 12:00", "2025-03-02 04:00"),  # 0 is Sunday
        ("5 0-23/6 * * *", "2025-03-01 06:05", "2025-03-01 12:05"),
    ],
)
def test_next_run(expression: str, after: str, expected: str) -> None:
    assert next_run(expression, at(after)) == at(expected)


def test_last_slot_is_inclusive_and_both_day_fields_must_match() -> None:
    cron = parse_cron("0 2 * * *")
    assert cron.last_at_or_before(at("2025-03-01 02:00:30")) == at("2025-03-01 02:00")
    assert cron.last_at_or_before(at("2025-03-01 01:59")) == at("2025-02-28 02:00")
    # day 13 AND Friday (Celery's rule, the same beat applies to its own entries)
    friday13 = parse_cron("0 0 13 * fri")
    assert friday13.next_after(at("2025-01-01 00:00")) == at("2025-06-13 00:00")
    assert friday13.last_at_or_before(at("2025-06-12 00:00")) == at("2024-12-13 00:00")


def test_next_run_agrees_with_celery_beat() -> None:
    """Our slots are the ones Celery's own crontab would fire at (its remaining_estimate)."""
    for expression in ("0 2 * * *", "*/20 9-17 * * mon-fri", "45 23 1,15 * *", "0 */3 * 6-8 sat"):
        cron = parse_cron(expression)
        moment = at("2025-05-30 22:50")
        for _ in range(20):
            expected = next_run(cron, moment)
            assert expected is not None
            minute, hour, day, month, weekday = expression.split()
            spec = crontab(minute, hour, weekday, day, month, nowfun=lambda m=moment: m)
            fired = moment + spec.remaining_estimate(moment)
            assert fired.replace(second=0, microsecond=0) == expected, (expression, moment)
            moment = expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 2 * *", "5 fields"),
        ("61 * * * *", "61 > 59"),
        ("0 2 * * 7", "7 > 6"),
        ("0 2 30 2 *", "never occurs"),
        ("x 2 * * *", "literal 'x'"),
    ],
)
def test_bad_cron_is_one_line(expression: str, message: str) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)) as caught:
        parse_cron(expression, "schedule n: cron")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("schedule n: cron")


# -- beat ----------------------------------------------------------------------------------


def test_beat_entries(tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", backup_schedule="15 4 * * sun"
    )
    beat = make_celery(settings).conf.beat_schedule
    assert beat["schedules"]["task"] == "buildfarm.schedules_tick"
    assert beat["schedules"]["schedule"] == crontab()  # every minute
    assert beat["retention"]["schedule"] == crontab.from_string("30 3 * * *")
    assert beat["backup"]["schedule"] == crontab.from_string("15 4 * * sun")
    routes = make_celery(settings).conf.task_routes
    assert {routes[t]["queue"] for t in ("buildfarm.schedules_tick", "buildfarm.retention_sweep")} == {
        "control"
    }
    no_backup = make_celery(load_settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0"))
    assert "backup" not in no_backup.conf.beat_schedule


ONE = {"name": "n", "cron": "0 1 * * *", "project": "p", "branch": "b", "user": "u"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"retention_schedule": "every day"}, "setting retention_schedule"),
        ({"schedules": [{"name": "n", "project": "p", "branch": "b", "user": "u"}]}, "no cron"),
        (
            {
                "schedules": [{"name": "n", "cron": "0 1 * * *", "project": "p", "branch": "b", "user": "u"}]
                * 2
            },
            "two schedules are named 'n'",
        ),
        # issue 11: a schedule's git and ref reach git's command line
        (
            {"schedules": [{**ONE, "git": "--upload-pack=touch /tmp/x", "ref": "v1"}]},
            r"setting schedules\.0\.git: .* starts with '-'",
        ),
        ({"schedules": [{**ONE, "git": "file:///srv/repo"}]}, "is not a network URL"),
        ({"schedules": [{**ONE, "git": "https://x/y", "ref": "--upload-pack=x"}]}, "invalid git ref"),
    ],
)
def test_bad_schedule_configuration_stops_the_process(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(PermanentError, match=message):
        make_celery(load_settings(state_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", **overrides))


# -- the tick on a real database --------------------------------------------------------------


TREE = "nightly-src"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    """A git server (loopback, allowed by LOOPBACK_GIT) of a repository holding one tiny package
    and its manifest (as some other project/branch)."""
    base = tmp_path_factory.mktemp("served")
    tree = base / TREE
    make_package(tree, "hello")
    write_manifest(tree, ["hello"], project="other", branch="elsewhere", kind="on-demand")
    commit_tree(tree)
    with GitServer(base) as server:
        yield server


@pytest.fixture(scope="module")
def git_tree(served: GitServer) -> str:
    return served.url(served.base / TREE)


def make_test_context(tmp_path: Path, database_url: str, **settings: object) -> FarmContext:
    """A farm that may fetch from the loopback git servers of these tests (an admin's allow-list)."""
    return farmkit.make_test_context(tmp_path, database_url, **(LOOPBACK_GIT | settings))


def _schedule(name: str, cron: str, git: str | None, **kw: str) -> dict[str, Any]:
    return {"name": name, "cron": cron, "project": "proj", "branch": "main", "user": "night", "git": git} | kw


def _farm(tmp_path: Path, url: str, schedules: list[dict[str, Any]]) -> FarmContext:
    ctx = make_test_context(tmp_path, url, schedules=schedules)
    accounts.add_project(ctx, "proj")
    accounts.add_user(ctx, "night", service=True)
    accounts.grant(ctx, "night", "proj", "builder")
    return ctx


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh database on the session's private PostgreSQL server."""
    with scratch_database(postgres_url, "schedules") as url:
        yield url


def _run_clock(ctx: FarmContext, start: dt.datetime, end: dt.datetime) -> dict[dt.datetime, list[int]]:
    """Tick every minute from start to end (inclusive): {tick time: builds it started}."""
    started: dict[dt.datetime, list[int]] = {}
    now = start
    while now <= end:
        ids = tick(ctx, now)
        if ids:
            started[now] = ids
        now += MINUTE
    return started


def _runs(ctx: FarmContext, name: str) -> list[ScheduleRun]:
    with ctx.db.session() as session:
        rows = session.scalars(
            select(ScheduleRun).where(ScheduleRun.schedule == name).order_by(ScheduleRun.slot)
        )
        return list(rows)


def test_one_run_per_slot_over_three_days(tmp_path: Path, sqlite_url: str, git_tree: str) -> None:
    ctx = _farm(
        tmp_path,
        sqlite_url,
        [
            _schedule("nightly", "0 2 * * *", git_tree, ref="main"),
            _schedule("thrice", "30 */8 * * *", git_tree),
        ],
    )
    start = at("2025-03-03 00:00")
    started = _run_clock(ctx, start, start + dt.timedelta(days=3) - MINUTE)
    # The first tick starts nothing (no back-fill of yesterday's slots); then every slot once,
    # at the minute it falls on.
    nightly = [at(f"2025-03-0{d} 02:00") for d in (3, 4, 5)]
    thrice = [at(f"2025-03-0{d} {h:02d}:30") for d in (3, 4, 5) for h in (0, 8, 16)]
    assert sorted(started) == sorted(nightly + thrice)
    assert all(len(ids) == 1 for ids in started.values())
    for name, slots, baseline in (
        ("nightly", nightly, at("2025-03-02 02:00")),
        ("thrice", thrice, at("2025-03-02 16:30")),
    ):
        runs = _runs(ctx, name)
        assert [(r.slot, r.baseline) for r in runs] == [(baseline, True)] + [(s, False) for s in slots]
        assert [r.build_id for r in runs[1:]] == [started[s][0] for s in slots]
        assert all(r.error is None for r in runs)
    with ctx.db.session() as session:
        builds = session.scalars(select(Build).order_by(Build.id)).all()
        # the schedule decides project, branch and kind; the service user runs them
        assert {(b.project, b.branch, b.kind, b.user) for b in builds} == {
            ("proj", "main", "nightly", "night")
        }
        assert len(builds) == len(nightly) + len(thrice)
    views = {v.name: v for v in list_schedules(ctx, start + dt.timedelta(days=3))}
    assert views["nightly"].next_run == "2025-03-06T02:00:00+00:00"
    assert views["nightly"].last_slot == "2025-03-05T02:00:00+00:00"
    assert views["nightly"].last_state == "running" and views["nightly"].last_error is None
    assert views["thrice"].source == f"{git_tree}@HEAD:buildfarm.yaml"


def test_downtime_starts_one_catch_up_run(tmp_path: Path, sqlite_url: str, git_tree: str) -> None:
    ctx = _farm(
        tmp_path,
        sqlite_url,
        [_schedule("nightly", "0 2 * * *", git_tree), _schedule("hourly", "0 * * * *", git_tree)],
    )
    day1 = at("2025-03-03 00:00")
    before = _run_clock(ctx, day1, at("2025-03-03 12:00"))
    assert len([t for t in before if t.minute == 0]) == 12  # hourly 01:00..12:00
    # The scheduler is down from 12:01 on the 3rd to 09:59 on the 5th: 2 nightly and ~46 hourly
    # slots are missed.  Back up, it starts each schedule's latest missed slot once.
    back = at("2025-03-05 09:59:30")
    caught_up = tick(ctx, back)
    assert len(caught_up) == 2
    assert [r.slot for r in _runs(ctx, "nightly")][-1] == at("2025-03-05 02:00")
    assert [r.slot for r in _runs(ctx, "hourly")][-1] == at("2025-03-05 09:00")
    assert tick(ctx, back + dt.timedelta(seconds=20)) == []  # the same minute again: nothing
    after = _run_clock(ctx, at("2025-03-05 10:00"), at("2025-03-06 02:00"))
    assert sorted(after) == [at("2025-03-05 10:00") + dt.timedelta(hours=h) for h in range(17)]
    assert len(after[at("2025-03-06 02:00")]) == 2  # nightly and hourly fall on the same minute
    with ctx.db.session() as session:
        assert len(session.scalars(select(Build.id)).all()) == (12 + 1) + 2 + (17 + 1)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_schedulers_start_a_slot_once(
    tmp_path: Path, database: str, request: pytest.FixtureRequest, git_tree: str
) -> None:
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url")
    first = _farm(tmp_path / "a", url, [_schedule("nightly", "0 2 * * *", git_tree)])
    second = make_test_context(tmp_path / "b", url, schedules=[_schedule("nightly", "0 2 * * *", git_tree)])
    assert tick(first, at("2025-03-03 01:00")) == []  # baseline
    assert _racing_ticks(first, second, at("2025-03-03 02:00:01")) == [0, 1]
    # a redelivered tick of the same minute, and a late one of the next minute, start nothing
    assert tick(second, at("2025-03-03 02:00:01")) == []
    assert tick(first, at("2025-03-03 02:01:05")) == []
    with first.db.session() as session:
        assert len(session.scalars(select(Build.id)).all()) == 1
    first.db.dispose()
    second.db.dispose()


def test_failures_are_recorded_and_do_not_stop_other_schedules(
    tmp_path: Path, sqlite_url: str, git_tree: str
) -> None:
    ctx = _farm(
        tmp_path,
        sqlite_url,
        [
            _schedule("no-manifest", "0 2 * * *", git_tree, manifest="missing.yaml"),
            _schedule("no-repo", "0 2 * * *", git_tree.replace(TREE, "absent.git")),
            _schedule("stranger", "0 2 * * *", git_tree, user="nobody"),
            _schedule("release", "0 2 * * *", git_tree, kind="release"),  # needs maintainer
            _schedule("good", "0 2 * * *", git_tree),
        ],
    )
    assert tick(ctx, at("2025-03-03 01:00")) == []
    started = tick(ctx, at("2025-03-03 02:00"))
    assert len(started) == 1
    views = {v.name: v for v in list_schedules(ctx, at("2025-03-03 02:01"))}
    assert views["good"].last_build == started[0] and views["good"].last_error is None
    errors = {
        name: views[name].last_error or "" for name in ("no-manifest", "no-repo", "stranger", "release")
    }
    assert "missing.yaml: no such manifest file" in errors["no-manifest"]
    assert "schedule no-repo: git fetch failed" in errors["no-repo"]
    assert errors["stranger"] == "user 'nobody' does not exist"
    assert "may not run scheduled release builds" in errors["release"]
    assert all("\n" not in e and "/schedule-" not in e for e in errors.values())  # no clone paths
    assert all(
        views[n].last_build is None and views[n].next_run == "2025-03-04T02:00:00+00:00" for n in errors
    )
    # a permanent error is not retried (not even with attempts left); the next slot tries again
    assert _run_clock(ctx, at("2025-03-03 02:01"), at("2025-03-03 04:00")) == {}
    assert all(views[n].last_state == "failed" and views[n].last_attempt == 1 for n in errors)
    assert all(r.attempt == 1 and r.retry_at is None for n in errors for r in _runs(ctx, n)[1:])


def test_a_schedules_credentials_are_never_shown(tmp_path: Path, sqlite_url: str) -> None:
    """schedule list is for builders too: a token in the git URL shows as ***."""
    ctx = _farm(
        tmp_path, sqlite_url, [_schedule("n", "0 2 * * *", "https://bob:s3cret@git.example.org/r.git")]
    )
    [view] = list_schedules(ctx, at("2025-03-03 01:00"))
    assert view.source == "https://***@git.example.org/r.git@HEAD:buildfarm.yaml"


def test_stored_manifest_builds_to_the_end(tmp_path: Path, sqlite_url: str) -> None:
    """A manifest kept on the farm (<state dir>/schedules/...), built for real by dpkg-buildpackage."""
    ctx = _farm(
        tmp_path, sqlite_url, [_schedule("local", "*/30 * * * *", None, manifest="web/buildfarm.yaml")]
    )
    tree = ctx.settings.state_dir / "schedules" / "web"
    make_package(tree, "hello")
    write_manifest(tree, ["hello"])
    tick(ctx, at("2025-03-03 00:10"))
    [build_id] = tick(ctx, at("2025-03-03 00:30"))
    drain(ctx)
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded" and view.user == "night" and view.kind == "nightly"
    assert [v.last_state for v in list_schedules(ctx, at("2025-03-03 00:31"))] == ["succeeded"]
    with ctx.db.session() as session:  # retention expired the build: the run stays listed
        session.execute(delete(Build).where(Build.id == build_id))  # steps and outputs cascade
    [view_after] = list_schedules(ctx, at("2025-03-03 00:31"))
    assert (view_after.last_build, view_after.last_state) == (build_id, "expired")


# -- schedule list: locally (CLI) and through the REST API ------------------------------------


def test_schedule_list_locally_and_through_the_api(
    tmp_path: Path, redis_flush: str, git_tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from buildfarm.api.app import create_app
    from buildfarm_cli.httpclient import HttpClient

    configured = [
        _schedule("nightly", "0 2 * * *", git_tree),
        _schedule("web-nightly", "15 1 * * *", git_tree, project="web"),
    ]
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    ctx = _farm(tmp_path, f"sqlite:///{state_dir / 'buildfarm.db'}", configured)
    accounts.add_project(ctx, "web")
    tick(ctx, at("2025-03-03 01:00"))
    [build_id] = tick(ctx, at("2025-03-03 02:00"))[:1]

    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BUILDFARM_SCHEDULES", json.dumps(configured))
    result = CliRunner().invoke(cli, ["schedule", "list", "--output", "json"])
    assert result.exit_code == 0, result.output
    local = {v["name"]: v for v in json.loads(result.stdout)}
    assert local["nightly"]["last_build"] == build_id and local["nightly"]["last_state"] == "running"
    assert local["nightly"]["last_slot"] == "2025-03-03T02:00:00+00:00"
    assert local["nightly"]["next_run"] > local["nightly"]["last_slot"]  # from the real clock
    # rich fixes a console's width when it is made if COLUMNS is set then (an xdist worker has it):
    # make the table wide enough to show whole names whatever the process started with
    monkeypatch.setattr(output.console(), "_width", 200)
    text_result = CliRunner().invoke(cli, ["schedule", "list"], env={"COLUMNS": "200"})
    assert text_result.exit_code == 0 and "nightly" in text_result.stdout

    api_ctx = make_test_context(
        tmp_path, f"sqlite:///{state_dir / 'buildfarm.db'}", schedules=configured, redis_url=redis_flush
    )
    app = create_app(api_ctx.settings, api_ctx)
    token = accounts.create_token(ctx, "night").token  # a builder in proj only
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "the API to listen")
        with HttpClient(f"http://127.0.0.1:{port}", token) as client:
            remote = client.schedules()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert [v.name for v in remote] == ["nightly"]  # web's schedule is not the caller's to see
    assert remote[0].last_build == build_id and remote[0].last_slot == local["nightly"]["last_slot"]
    api_ctx.db.dispose()
    ctx.db.dispose()


# -- recovery: a scheduler killed mid-start, temporary failures retried -----------------------


class Killed(BaseException):
    """The scheduler process dies here (not an Exception: nothing in the farm catches it)."""


def _killed(*_args: object, **_kwargs: object) -> None:
    raise Killed


@pytest.fixture
def git_server(served: GitServer) -> Iterator[GitServer]:
    """A second server of the same repository, down until a test starts it (an outage)."""
    server = GitServer(served.base)
    yield server
    server.stop()


def _builds(ctx: FarmContext) -> list[Build]:
    with ctx.db.session() as session:
        return list(session.scalars(select(Build).order_by(Build.id)))


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_claim_left_by_a_dead_scheduler_is_taken_over_once(
    tmp_path: Path,
    database: str,
    request: pytest.FixtureRequest,
    git_tree: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url")
    first = _farm(tmp_path / "a", url, [_schedule("nightly", "0 2 * * *", git_tree)])
    second = make_test_context(tmp_path / "b", url, schedules=[_schedule("nightly", "0 2 * * *", git_tree)])
    assert first.settings.schedules.start_timeout_seconds == 600  # the default: 10 minutes
    tick(first, at("2025-03-03 01:00"))
    # killed between the claim and the submit: the claimed row stays behind, without build
    monkeypatch.setattr(schedule_slots, "start_schedule", _killed)
    with pytest.raises(Killed):
        tick(first, at("2025-03-03 02:00"))
    monkeypatch.undo()
    assert [(r.attempt, r.build_id, r.error) for r in _runs(first, "nightly")[1:]] == [(1, None, None)]
    # younger than the timeout it may still be starting: nobody takes it over
    assert _run_clock(second, at("2025-03-03 02:01"), at("2025-03-03 02:09")) == {}
    [view] = list_schedules(first, at("2025-03-03 02:09"))
    assert (view.last_state, view.last_attempt) == ("starting", 1)
    assert _racing_ticks(first, second, at("2025-03-03 02:10:01")) == [0, 1]
    [build] = _builds(first)
    [run] = _runs(first, "nightly")[1:]
    assert (run.attempt, run.build_id, run.error) == (2, build.id, None)
    assert build.schedule_slot == "nightly@2025-03-03T02:00:00+00:00"
    assert _run_clock(first, at("2025-03-03 02:11"), at("2025-03-03 02:40")) == {}
    assert len(_builds(first)) == 1
    first.db.dispose()
    second.db.dispose()


def test_killed_after_the_submit_the_build_is_found_not_submitted_again(
    tmp_path: Path, sqlite_url: str, git_tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _farm(tmp_path, sqlite_url, [_schedule("nightly", "0 2 * * *", git_tree)])
    tick(ctx, at("2025-03-03 01:00"))
    recorded = schedule_slots._record

    def killed_before_recording_a_build(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("build_id") is not None:
            raise Killed
        recorded(*args, **kwargs)

    monkeypatch.setattr(schedule_slots, "_record", killed_before_recording_a_build)
    with pytest.raises(Killed):
        tick(ctx, at("2025-03-03 02:00"))
    monkeypatch.undo()
    [build] = _builds(ctx)
    assert _runs(ctx, "nightly")[-1].build_id is None
    assert _run_clock(ctx, at("2025-03-03 02:01"), at("2025-03-03 02:30")) == {}  # none started
    assert [b.id for b in _builds(ctx)] == [build.id]
    [run] = _runs(ctx, "nightly")[1:]
    assert (run.attempt, run.build_id) == (2, build.id)  # the second attempt found and recorded it
    assert dispatcher(ctx).advances == [build.id]
    [view] = list_schedules(ctx, at("2025-03-03 02:30"))
    assert (view.last_build, view.last_state, view.last_error) == (build.id, "running", None)
    # an attempt that was only slow, and submits after being overtaken, is refused a second build
    with pytest.raises(IntegrityError):
        schedules.start_schedule(ctx, ctx.settings.schedules.builds[0], run.slot)
    assert len(_builds(ctx)) == 1


def test_the_last_attempt_killed_is_not_retried(
    tmp_path: Path, sqlite_url: str, git_tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_test_context(
        tmp_path,
        sqlite_url,
        schedules=[_schedule("nightly", "0 2 * * *", git_tree)],
        schedule_start_attempts=1,
    )
    tick(ctx, at("2025-03-03 01:00"))
    monkeypatch.setattr(schedule_slots, "start_schedule", _killed)
    with pytest.raises(Killed):
        tick(ctx, at("2025-03-03 02:00"))
    assert _run_clock(ctx, at("2025-03-03 02:01"), at("2025-03-03 02:30")) == {}  # no Killed: not run
    [run] = _runs(ctx, "nightly")[1:]
    assert run.error == "not started: the scheduler stopped during attempt 1 of 1" and run.retry_at is None
    assert [v.last_state for v in list_schedules(ctx, at("2025-03-03 02:30"))] == ["failed"]


def test_a_git_outage_is_retried_with_backoff_and_the_slot_starts_once(
    tmp_path: Path, sqlite_url: str, git_server: GitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = [_schedule("nightly", "0 2 * * *", git_server.url(git_server.base / TREE))]
    ctx = _farm(tmp_path, sqlite_url, configured)
    tick(ctx, at("2025-03-03 01:00"))
    assert tick(ctx, at("2025-03-03 02:00")) == []  # git is down
    [view] = list_schedules(ctx, at("2025-03-03 02:00:30"))
    assert (view.last_state, view.last_attempt, view.max_attempts) == ("retrying", 1, 5)
    assert view.retry_at == "2025-03-03T02:01:00+00:00"  # schedule_retry_seconds: 60
    assert "schedule nightly: git fetch failed" in (view.last_error or "")
    assert tick(ctx, at("2025-03-03 02:00:30")) == []  # not due yet
    assert tick(ctx, at("2025-03-03 02:01")) == []  # still down: the pause doubles
    [view] = list_schedules(ctx, at("2025-03-03 02:01:30"))
    assert (view.last_state, view.last_attempt, view.retry_at) == ("retrying", 2, "2025-03-03T02:03:00+00:00")

    state_dir = ctx.settings.state_dir
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BUILDFARM_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("BUILDFARM_SCHEDULES", json.dumps(configured))
    monkeypatch.setattr(output.console(), "_width", 250)
    shown = CliRunner().invoke(cli, ["schedule", "list"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "retrying (attempt 2 of 5 failed, next at 2025-03-03 02:03)" in " ".join(shown.stdout.split())

    git_server.start()
    started = _run_clock(ctx, at("2025-03-03 02:02"), at("2025-03-03 03:00"))
    assert list(started) == [at("2025-03-03 02:03")]
    [build] = _builds(ctx)
    assert started[at("2025-03-03 02:03")] == [build.id]
    [view] = list_schedules(ctx, at("2025-03-03 03:00"))
    assert (view.last_build, view.last_state, view.last_attempt, view.last_error) == (
        build.id,
        "running",
        3,
        None,
    )


def test_retries_stop_at_the_next_slot(tmp_path: Path, sqlite_url: str, git_server: GitServer) -> None:
    ctx = make_test_context(
        tmp_path,
        sqlite_url,
        schedules=[_schedule("hourly", "0 * * * *", git_server.url(git_server.base / TREE))],
        schedule_start_attempts=10,
        schedule_retry_seconds=600,
    )
    accounts.add_project(ctx, "proj")
    accounts.add_user(ctx, "night", service=True)
    accounts.grant(ctx, "night", "proj", "builder")
    tick(ctx, at("2025-03-03 01:30"))
    assert _run_clock(ctx, at("2025-03-03 02:00"), at("2025-03-03 02:59")) == {}
    # tried at 02:00, 02:10 and 02:30; the next pause (40 min) would reach 03:00, the next slot
    [run] = _runs(ctx, "hourly")[1:]
    assert (run.slot, run.attempt, run.retry_at) == (at("2025-03-03 02:00"), 3, None)
    assert "git fetch failed" in (run.error or "")
    [view] = list_schedules(ctx, at("2025-03-03 02:59"))
    assert (view.last_state, view.last_attempt) == ("failed", 3)
    git_server.start()
    started = _run_clock(ctx, at("2025-03-03 03:00"), at("2025-03-03 03:05"))
    assert list(started) == [at("2025-03-03 03:00")]  # the next slot simply runs
    assert [(r.slot, r.attempt, r.build_id is not None) for r in _runs(ctx, "hourly")[1:]] == [
        (at("2025-03-03 02:00"), 3, False),
        (at("2025-03-03 03:00"), 1, True),
    ]
