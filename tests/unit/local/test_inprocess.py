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

from buildfarm.local.inprocess import LOCAL_URL, LocalFarm
from buildfarm.model.errors import NotFoundError, PermanentError
from buildfarm.model.settings import load_settings
from buildfarm.state.db import Database
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
