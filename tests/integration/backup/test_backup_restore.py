"""The restore drill: back up a farm with releases and nightly builds, destroy it, restore it into a
fresh one (new PostgreSQL database, new Pulp server, new S3 bucket), and check what came back.

The old farm runs on the session's Pulp and a moto S3 bucket; the new farm gets a second, real
Pulp stack of its own (ops/pulp/pulpstack.py, ~25 s) so nothing the old Pulp holds can leak into
the check.  History: release 1 (v1), nightly 2 (v2), release 3 (v2 again: every step reused from
the nightly, which is not backed up), nightly 4 (v3, so ``latest`` points at a nightly when the
backup is taken).  After the restore every release object is byte-identical, apt gets release 3
from ``latest`` and release 1 from its own distribution, the nightly builds and their
distributions are absent, tokens still log in and the next build is numbered after the restored
ones.  Backups go to a directory (the full drill) and to a second bucket under a prefix (run and
verify); a second run copies nothing, and verify names a corrupted object.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from buildfarm import accounts
from buildfarm.backup import restore_backup, run_backup, verify_backup
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient
from buildfarm.model.errors import ConflictError, NotFoundError
from buildfarm.model.manifest import load_manifest
from buildfarm.wiring import Wiring, check_backends, make_repository, make_store

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context
from pulpkit import PulpServer, _load_pulpstack, pulp_server  # noqa: F401 - the session's Pulp stack
from s3kit import MotoS3, running_moto_s3

PROJECT, BRANCH = "bkp", "main"
NAMES = ["bk-lib", "bk-tool"]
_databases = itertools.count()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def second_pulp(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulpServer]:
    """A second Pulp server with its own database and storage: the fresh farm's repository."""
    pulpstack = _load_pulpstack()
    database = make_url(postgres_url)
    stack: Any = pulpstack.PulpStack(
        root=tmp_path_factory.mktemp("pulp-restored"),
        db_host=database.host or "127.0.0.1",
        db_port=database.port or 5432,
        db_user=database.username or "postgres",
        db_name="pulp_restore_test",
    )
    try:
        stack.prepare()
        stack.start()
        yield PulpServer(
            stack.base_url, pulpstack.ADMIN_USER, stack.password, stack.content_origin, stack.root, 0.0, 0.0
        )
    finally:
        stack.stop()


def _new_database(postgres_url: str) -> str:
    server = make_url(postgres_url)
    name = f"backup_{next(_databases)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def _drop_database(postgres_url: str, url: str) -> None:
    admin = create_engine(make_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _farm(root: Path, database_url: str, moto: MotoS3, pulp: PulpServer, **extra: object) -> FarmContext:
    settings: dict[str, object] = {
        **moto.settings(),
        **pulp.settings(),
        **extra,
    }
    root.mkdir(parents=True)
    ctx = make_test_context(root, database_url, **settings)
    check_backends(ctx.settings)
    ctx.store = make_store(ctx.settings)
    ctx.repo = make_repository(ctx.settings)
    return ctx


def _build(ctx: FarmContext, src: Path, version: str, kind: str) -> int:
    make_package(src, "bk-lib", version=version)
    make_package(src, "bk-tool", version=version, build_depends=("bk-lib",))
    manifest = write_manifest(src, NAMES, project=PROJECT, branch=BRANCH, kind=kind)
    build_id = submit_build(ctx, load_manifest(manifest), src, "alice")
    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"
    return build_id


def _objects(ctx: FarmContext, build_id: int) -> dict[str, str]:
    """sha256 of every object of a build (outputs and sources) -> what it is."""
    view = control.show_build(ctx, build_id)
    found: dict[str, str] = {}
    for step in view.steps:
        for output in step.outputs:
            found[output["sha256"]] = output["filename"]
    with ctx.db.session() as session:
        from buildfarm.state.models import Step

        for step_row in session.query(Step).filter(Step.build_id == build_id):
            found.setdefault(step_row.source_sha256, f"source of {step_row.name}")
    return found


def _apt_debs(workdir: Path, line: str) -> dict[str, bytes]:
    apt = AptClient(workdir, line)
    apt.update()
    return {name: apt.download(name).read_bytes() for name in NAMES}


def _settings_with(ctx: FarmContext, **changes: object) -> FarmContext:
    settings = ctx.settings.replace(**changes)
    return dataclasses.replace(ctx, settings=settings, parts=Wiring(settings))


def test_restore_drill(
    tmp_path: Path,
    postgres_url: str,
    moto: MotoS3,
    pulp_server: PulpServer,  # noqa: F811
    second_pulp: PulpServer,
) -> None:
    backup_dir = tmp_path / "backup"
    old_db = _new_database(postgres_url)
    old = _farm(tmp_path / "old", old_db, moto, pulp_server, backup_target=str(backup_dir))
    accounts.add_user(old, "alice")
    accounts.add_project(old, PROJECT)
    accounts.grant(old, "alice", PROJECT, "maintainer")
    token = accounts.create_token(old, "alice", "ci").token
    src = tmp_path / "src"
    release1 = _build(old, src, "1.0", "release")
    nightly2 = _build(old, src, "2.0", "nightly")
    release3 = _build(old, src, "2.0", "release")
    nightly4 = _build(old, src, "3.0", "nightly")
    assert {s.state for s in control.show_build(old, release3).steps} == {"reused"}

    releases = {b: _objects(old, b) for b in (release1, release3)}
    nightly_only = set(_objects(old, nightly4)) - {sha for objs in releases.values() for sha in objs}
    assert nightly_only
    old_debs = {
        release1: _apt_debs(tmp_path / "apt-old-1", old.repo.sources(PROJECT, BRANCH, release1).line()),
        release3: _apt_debs(tmp_path / "apt-old-3", old.repo.sources(PROJECT, BRANCH, release3).line()),
    }
    log_key, _live = control.step_log_key(old, release3, "bk-tool")
    assert log_key is not None
    old_log = old.store.read_log(log_key, 0)[0]
    assert old_log

    first = run_backup(old)
    assert first.builds == [release1, release3]
    assert first.copied_objects == first.objects and first.copied_bytes > 0
    again = run_backup(old)
    assert (again.copied_objects, again.copied_bytes) == (0, 0)
    assert again.objects == first.objects and again.catalogue_sha256 == first.catalogue_sha256
    assert verify_backup(old).ok

    # A second target: a bucket under a prefix, run and verify.
    bucket = moto.new_bucket()
    in_bucket = _settings_with(old, backup_target=f"s3://{bucket}/farm-backups")
    to_s3 = run_backup(in_bucket)
    assert to_s3.objects == first.objects and to_s3.copied_bytes == first.copied_bytes
    assert all(name.startswith("farm-backups/") for name in moto.object_names(bucket))
    checked = verify_backup(in_bucket)
    assert checked.ok and checked.objects == first.objects

    # Destroy the old farm: its database and its bucket's objects.
    old.db.dispose()
    _drop_database(postgres_url, old_db)
    client = moto.client()
    for name in moto.object_names(old.settings.storage.s3_bucket):
        client.remove_object(old.settings.storage.s3_bucket, name)

    new_db = _new_database(postgres_url)
    new = _farm(tmp_path / "new", new_db, moto, second_pulp, backup_target=str(backup_dir))
    restored = restore_backup(new)
    assert restored.builds == [release1, release3]
    assert restored.latest == {f"{PROJECT}/{BRANCH}": release3}

    # Every release object byte-identical (fetch checks each object's sha256 against its name).
    for objects in releases.values():
        for sha256, what in objects.items():
            path = tmp_path / "fetched" / sha256
            new.store.fetch(sha256, path)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, what
    for sha256 in nightly_only:
        assert not new.store.has(sha256)
    assert new.store.read_log(log_key, 0)[0] == old_log

    # apt serves the releases again, byte-identical; latest is the newest release.
    assert (
        _apt_debs(tmp_path / "apt-new-latest", new.repo.sources(PROJECT, BRANCH).line()) == old_debs[release3]
    )
    line1 = new.repo.sources(PROJECT, BRANCH, release1).line()
    assert line1.startswith(f"deb [trusted=yes] {second_pulp.content_origin}/")
    assert _apt_debs(tmp_path / "apt-new-1", line1) == old_debs[release1]
    assert control.show_build(new, release1).published == line1

    # Nightly builds: no records, no distributions.
    for nightly in (nightly2, nightly4):
        with pytest.raises(NotFoundError):
            control.show_build(new, nightly)
        with pytest.raises(NotFoundError):
            new.repo.sources(PROJECT, BRANCH, nightly)
    assert [b.id for b in control.page_builds(new, None, None, None, 50).items] == [release3, release1]

    # Accounts came back; the farm refuses a second restore; the next build follows the restored ids.
    assert accounts.authenticate(new, token).user == "alice"
    with pytest.raises(ConflictError, match="already has 2 builds"):
        restore_backup(new)
    next_build = _build(new, src, "4.0", "nightly")
    assert next_build > release3

    # verify names a corrupted object; the next backup run copies it again.
    victim = (
        backup_dir
        / "objects"
        / "sha256"
        / next(iter(releases[release1]))[:2]
        / next(iter(releases[release1]))
    )
    victim.chmod(0o644)
    victim.write_bytes(b"rotten")
    broken = verify_backup(new)
    assert broken.corrupt == [victim.name] and not broken.ok
    healed = _settings_with(new, backup_target=str(backup_dir))
    assert run_backup(healed).copied_objects >= 1
    assert verify_backup(healed).ok
    new.db.dispose()
    _drop_database(postgres_url, new_db)
