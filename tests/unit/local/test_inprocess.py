"""The local CLI talks to the REST API's application in-process, as the farm's own admin.

No farm process runs here: the state directory holds a SQLite database at most, which is all the
routes these tests call need.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from pathlib import Path

import pytest
from sqlalchemy import update

from buildfarm.backends.fs import FsArtifactStore
from buildfarm.local.inprocess import LOCAL_URL, LocalFarm
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settings import load_settings
from buildfarm.model.types import StepState
from buildfarm.state.db import Database
from buildfarm.state.models import Step
from buildfarm_cli.httpclient import HttpClient

from farmkit import finished_build


def _local(state: Path) -> HttpClient:
    return HttpClient(LOCAL_URL, None, local=LocalFarm(load_settings(state_dir=state)))


def test_the_local_client_is_the_api_as_the_farms_admin(tmp_path: Path) -> None:
    client = _local(tmp_path / "state")
    try:
        me = client.api.whoami()  # an API route: the old local adapter had none
        assert (me.user, me.admin) == (getpass.getuser(), True)
        # accounts need only the database, made on the way: no farm was ever started
        assert client.add_user("bob").name == "bob"
        assert client.create_token("bob", "ci", 7).user == "bob"
        # the API's own validation answers, as it would over the network
        with pytest.raises(PermanentError, match="expires_days"):
            client.create_token("bob", "ci", 0)
        with pytest.raises(NotFoundError, match="user 'carol' does not exist"):
            client.create_token("carol")
        client.add_project("p")
        refused = r"^body\.role: unknown role 'owner': viewer, builder or maintainer$"
        with pytest.raises(PermanentError, match=refused):
            client.grant("bob", "p", "owner")
    finally:
        client.close()


def test_builds_of_a_farm_never_started_are_refused_before_anything_is_opened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    client = _local(state)
    try:
        with pytest.raises(PermanentError, match=f"no local farm in {state}: run `buildfarm start`"):
            client.show(1)
        status = client.status()  # says the farm is not running, from its state dir alone
        assert (status["running"], status["state_dir"], status["nodes"]) == (False, str(state), {})
    finally:
        client.close()
    assert not state.exists()


def test_a_local_sweep_reports_its_progress_through_the_api(tmp_path: Path) -> None:
    state = tmp_path / "state"
    client = _local(state)
    phases: list[tuple[str, int, int]] = []
    try:
        client.storage_report()  # brings the database up to date
        db = Database(f"sqlite:///{state / 'buildfarm.db'}")
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
        with db.session() as session:
            expired = [finished_build(session, finished=old + dt.timedelta(hours=n)).id for n in range(5)]
        db.dispose()
        report = client.run_retention(False, lambda phase, done, total: phases.append((phase, done, total)))
    finally:
        client.close()
    assert sorted(report.build_ids) == expired[:2]  # the newest three of the branch are kept
    assert ("repository", 2, 2) in phases
    assert json.loads(report.model_dump_json())["dry_run"] is False


def test_a_log_follower_reads_a_retried_steps_new_log_from_its_start(tmp_path: Path) -> None:
    state = tmp_path / "state"
    client = _local(state)
    try:
        client.storage_report()  # brings the database up to date
        (state / "farm.json").write_text(json.dumps({"runner": "host", "nodes": ["node1"]}))  # a stopped farm
        store = FsArtifactStore(state / "artifacts")
        for attempt, text in ((1, "first attempt\n"), (2, "second\n")):
            writer = store.open_log(f"logs/1/hello/{attempt}.log")
            writer.write_line(text.rstrip("\n"))
            writer.close()
        db = Database(f"sqlite:///{state / 'buildfarm.db'}")
        with db.session() as session:
            build = finished_build(session, state="running", finished=None)
            step = Step(
                build_id=build.id,
                name="hello",
                version="1.0",
                origin="path:hello",
                source_sha256="0" * 64,
                tree_hash="0" * 64,
                input_key="k",
                depends_on=[],
                state=StepState.RUNNING,
                attempt=1,
                log_key="logs/1/hello/1.log",
            )
            session.add(step)
        chunk, offset, live = client.read_log(1, "hello", 0)
        assert (chunk, offset, live) == (b"first attempt\n", 14, True)
        with db.session() as session:  # the node was lost: attempt 2 logs anew
            session.execute(update(Step).values(attempt=2, log_key="logs/1/hello/2.log"))
        db.dispose()
        assert client.read_log(1, "hello", offset) == (b"second\n", 7, True)
    finally:
        client.close()
