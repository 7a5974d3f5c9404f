"""``buildfarm backup run|verify|restore`` on the local profile (SQLite, a directory store, the local
apt repository), through the CLI as an operator runs it: where the farm's settings are.

The full drill on Pulp and S3 is tests/integration/backup/test_backup_restore.py; this one checks the
commands themselves: JSON reports, verify's exit status naming a corrupted object, the healing
run, a restore into a fresh state directory, and the one-line refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from buildfarm.engine import control
from buildfarm.engine.submit import submit_build
from buildfarm.model.errors import ConflictError, NotFoundError, PermanentError
from buildfarm.model.manifest import load_manifest

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context


def _env(monkeypatch: pytest.MonkeyPatch, state_dir: Path, backup: Path) -> None:
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BUILDFARM_DATABASE_URL", f"sqlite:///{state_dir / 'state.db'}")
    monkeypatch.setenv("BUILDFARM_BACKUP_TARGET", str(backup))
    monkeypatch.setenv("BUILDFARM_REPO_PORT", "1")
    monkeypatch.delenv("BUILDFARM_URL", raising=False)
    monkeypatch.delenv("BUILDFARM_REDIS_URL", raising=False)


def test_backup_commands_on_the_local_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buildfarm_cli.main import app as cli

    (tmp_path / "old" / "state").mkdir(parents=True)
    old = make_test_context(tmp_path / "old", f"sqlite:///{tmp_path / 'old' / 'state' / 'state.db'}")
    src = tmp_path / "src"
    make_package(src, "cli-pkg")
    release = submit_build(old, load_manifest(write_manifest(src, ["cli-pkg"], kind="release")), src, "bob")
    drain(old)
    make_package(src, "cli-pkg", version="2.0")
    nightly = submit_build(old, load_manifest(write_manifest(src, ["cli-pkg"], kind="nightly")), src, "bob")
    drain(old)
    deb = next(o for s in control.show_build(old, release).steps for o in s.outputs)
    old.db.dispose()

    backup = tmp_path / "backup"
    runner = CliRunner()
    _env(monkeypatch, old.settings.state_dir, backup)
    ran = runner.invoke(cli, ["backup", "run", "--output", "json"])
    assert ran.exit_code == 0, ran.output
    report = json.loads(ran.stdout)
    assert report["builds"] == [release] and report["copied_objects"] == report["objects"] > 0
    assert runner.invoke(cli, ["backup", "verify"]).exit_code == 0

    victim = backup / "objects" / "sha256" / deb["sha256"][:2] / deb["sha256"]
    victim.chmod(0o644)
    victim.write_bytes(b"bit rot")
    checked = runner.invoke(cli, ["backup", "verify"], env={"COLUMNS": "200"})
    assert checked.exit_code == 1
    assert f"corrupt: {deb['sha256']}" in checked.output
    healed = json.loads(runner.invoke(cli, ["backup", "run", "--output", "json"]).stdout)
    assert (healed["copied_objects"], healed["copied_bytes"]) == (1, deb["size"])
    assert runner.invoke(cli, ["backup", "verify"]).exit_code == 0

    refused = runner.invoke(cli, ["--farm", "http://farm.invalid", "backup", "run"])
    assert isinstance(refused.exception, PermanentError) and "drop --farm" in str(refused.exception)

    fresh = tmp_path / "new" / "state"
    fresh.mkdir(parents=True)
    _env(monkeypatch, fresh, backup)
    restored = runner.invoke(cli, ["backup", "restore", "--output", "json"])
    assert restored.exit_code == 0, restored.output
    assert json.loads(restored.stdout)["latest"] == {"proj/main": release}
    new = make_test_context(tmp_path / "new", f"sqlite:///{fresh / 'state.db'}")
    assert control.show_build(new, release).state == "succeeded"
    assert new.repo.sources("proj", "main", release).line() == control.show_build(new, release).published
    with pytest.raises(NotFoundError):
        control.show_build(new, nightly)
    fetched = tmp_path / "fetched.deb"
    new.store.fetch(deb["sha256"], fetched)
    new.db.dispose()

    again = runner.invoke(cli, ["backup", "restore"])
    assert again.exit_code == 1 and isinstance(again.exception, ConflictError)
    assert "restore only into a fresh, empty farm" in str(again.exception)
