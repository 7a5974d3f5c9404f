"""The scheduler's periodic tasks run the real retention sweep and backup (task bodies called
in-process, as a worker would, with the farm's settings from the environment)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from sqlalchemy import update

from buildfarm.dispatch import tasks
from buildfarm.engine import control
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import NotFoundError
from buildfarm.model.manifest import load_manifest
from buildfarm.state.models import Build

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context


def test_scheduled_sweep_and_backup_run_for_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ctx = make_test_context(tmp_path, url, retention_keep_newest=0)
    src = tmp_path / "src"
    make_package(src, "task-pkg")
    release = submit_build(ctx, load_manifest(write_manifest(src, ["task-pkg"], kind="release")), src, "bob")
    drain(ctx)
    make_package(src, "task-pkg", version="2.0")
    nightly = submit_build(ctx, load_manifest(write_manifest(src, ["task-pkg"], kind="nightly")), src, "bob")
    drain(ctx)
    make_package(src, "task-pkg", version="3.0")
    newest = submit_build(ctx, load_manifest(write_manifest(src, ["task-pkg"], kind="nightly")), src, "bob")
    drain(ctx)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
    with ctx.db.session() as session:  # the first nightly finished long ago
        session.execute(update(Build).where(Build.id == nightly).values(finished_at=old, created_at=old))
    ctx.db.dispose()

    backup = tmp_path / "backup"
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(ctx.settings.state_dir))
    monkeypatch.setenv("BUILDFARM_DATABASE_URL", url)
    monkeypatch.setenv("BUILDFARM_RUNNER", "host")
    monkeypatch.setenv("BUILDFARM_REPO_PORT", "1")
    monkeypatch.setenv("BUILDFARM_REDIS_URL", "redis://unused.invalid:1/0")
    monkeypatch.setenv("BUILDFARM_RETENTION_KEEP_NEWEST", "0")
    monkeypatch.setenv("BUILDFARM_RETENTION_GRACE_SECONDS", "0")
    monkeypatch.setenv("BUILDFARM_BACKUP_TARGET", str(backup))
    caplog.set_level(logging.INFO, logger="buildfarm.dispatch.tasks")

    tasks.retention_sweep.run()
    with pytest.raises(NotFoundError, match=f"build {nightly} does not exist"):
        control.show_build(ctx, nightly)
    assert control.show_build(ctx, release).state == "succeeded"  # releases are kept forever
    assert control.show_build(ctx, newest).state == "succeeded"  # latest is kept
    tasks.backup_run.run()
    assert any((backup / "objects").rglob("*")), "the backup copied nothing"
    assert any(r.message.startswith("retention: ") for r in caplog.records)
    assert any(r.message.startswith("backup: ") for r in caplog.records)
