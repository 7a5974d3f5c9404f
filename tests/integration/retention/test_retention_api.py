"""The retention routes of the REST API: admins only, and the answers parse into the engine's reports.

Rows are inserted directly (one expired nightly build, one kept): the sweep itself is tested in
tests/unit/retention/test_retention_policy.py and tests/integration/retention/test_retention_local.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from buildfarm import accounts
from buildfarm.api.app import create_app
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine.context import FarmContext
from buildfarm.model.errors import BuildfarmError
from buildfarm.model.sources import pack_tree
from buildfarm.state.models import Build, Step, StepOutput, Upload
from buildfarm_cli.httpclient import HttpClient

from farmkit import finished_build, make_test_context
from helpers import free_port, wait_until


@contextmanager
def serving(ctx: FarmContext) -> Iterator[str]:
    """The farm's real API app under uvicorn on a free port, in a thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(ctx.settings, ctx), "127.0.0.1", port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started, 30, "uvicorn")
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def farm(tmp_path: Path, redis_url: str) -> Iterator[FarmContext]:
    ctx = make_test_context(
        tmp_path, f"sqlite:///{tmp_path / 'state.db'}", redis_url=redis_url, retention_keep_newest=1
    )
    yield ctx
    ctx.db.dispose()


def _add_build(ctx: FarmContext, days_ago: float, payload: bytes) -> int:
    finished = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    output = ctx.store.put_bytes(payload)
    source = ctx.store.put_bytes(payload + b" source")
    with ctx.db.session() as session:
        build = finished_build(session, kind="nightly", finished=finished)
        step = Step(
            build_id=build.id,
            name="pkg",
            version="1",
            origin="test",
            source_sha256=source.sha256,
            tree_hash="0" * 64,
            input_key=output.sha256,
            depends_on=[],
            state="succeeded",
            attempt=1,
        )
        session.add(step)
        session.flush()
        session.add(
            StepOutput(step_id=step.id, attempt=1, filename="pkg.deb", sha256=output.sha256, size=output.size)
        )
        return build.id


def test_retention_routes_are_for_admins_and_answer_reports(farm: FarmContext) -> None:
    old = _add_build(farm, 30, b"old package")
    _add_build(farm, 40, b"older package")  # the last success of pkg is the newest: this one goes
    new = _add_build(farm, 1, b"new package")
    admin = accounts.init_admin(farm).token
    accounts.add_user(farm, "bob")
    bob = accounts.create_token(farm, "bob").token
    with serving(farm) as url:
        for method, path in (("POST", "/api/v1/retention/run"), ("GET", "/api/v1/storage")):
            denied = httpx.request(method, url + path, headers={"Authorization": f"Bearer {bob}"})
            assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
            assert httpx.request(method, url + path).status_code == 401
        refused = HttpClient(url, bob)
        with pytest.raises(BuildfarmError, match="not an admin"):
            refused.run_retention(dry_run=True)
        refused.close()
        client = HttpClient(url, admin)  # the CLI's client: the answers parse into the engine's reports
        report = client.storage_report()
        assert report.builds == 3
        assert report.groups[0].output_bytes == sum(
            map(len, (b"old package", b"older package", b"new package"))
        )
        assert report.next_sweep.dry_run and report.next_sweep.build_ids == [old, old + 1]
        assert client.run_retention(dry_run=True).build_ids == [old, old + 1]
        done = client.run_retention(dry_run=False)
        client.close()
    assert not done.dry_run and done.build_ids == [old, old + 1] and done.builds_deleted == 2
    with farm.db.session() as session:
        assert list(session.scalars(select(Build.id))) == [new]


def test_uploads_no_build_used_are_recorded_counted_and_swept(farm: FarmContext, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "debian").mkdir(parents=True)
    (tree / "debian" / "control").write_text("Source: never-submitted\n")
    tarball = pack_tree(tree)
    sha = hashlib.sha256(tarball).hexdigest()
    admin = accounts.init_admin(farm).token
    used = _add_build(farm, 1, b"kept package")  # its source is also uploaded below
    with farm.db.session() as session:
        used_source = session.scalars(select(Step.source_sha256).where(Step.build_id == used)).one()
    with serving(farm) as url:
        headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/octet-stream"}
        put = f"{url}/api/v1/sources/{sha}"
        assert httpx.put(put, content=tarball, headers=headers).status_code == 201
        assert httpx.put(put, content=tarball, headers=headers).status_code == 200  # stored: recorded again
        with farm.db.session() as session:
            assert [(u.sha256, u.size, u.user) for u in session.scalars(select(Upload))] == [
                (sha, len(tarball), "admin")
            ] * 2
            session.add(Upload(sha256=used_source, size=1, user="admin"))
        client = HttpClient(url, admin)
        report = client.storage_report()
        assert (report.uploads, report.upload_bytes) == (1, len(tarball))  # the used one is a build's
        assert client.run_retention(dry_run=True).uploads == 0  # younger than retention_upload_hours
        # A day and more later (and long past the grace period) nobody submitted it.
        old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=30)
        with farm.db.session() as session:
            for upload in session.scalars(select(Upload)):
                upload.uploaded_at = old
        store = farm.store
        assert isinstance(store, FsArtifactStore)
        for object_sha in (sha, used_source):
            os.utime(store.object_path(object_sha), (old.timestamp(), old.timestamp()))
        dry = client.run_retention(dry_run=True)
        assert (dry.uploads, dry.objects, dry.bytes_freed) == (1, 1, len(tarball))
        done = client.run_retention(dry_run=False)
        client.close()
    assert (done.uploads, done.objects, done.build_ids) == (1, 1, [])
    assert not store.has(sha) and store.has(used_source)  # the build that names it is kept
    with farm.db.session() as session:
        assert list(session.scalars(select(Upload))) == []
