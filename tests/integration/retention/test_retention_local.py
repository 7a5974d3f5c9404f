"""The retention sweep on a local-profile farm: real builds, the real APT repository, real apt.

Three nightly builds of one branch: the first builds ``oldpkg`` 0.1; the second ``keepme`` and
``oldpkg`` 1.0; the third reuses ``keepme`` from the second and builds ``oldpkg`` 2.0.  The first
two are then dated a month back and the policy keeps only the newest build of a branch: they
expire.  The first goes whole; the second keeps its ``keepme`` step (the third, kept, reuses
it) and nothing else.  apt proves it: the expired distributions are gone, the kept one still
serves byte-identical packages, and a dry run changed nothing.  Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from buildfarm.backends.fs import FsArtifactStore
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.manifest import load_manifest
from buildfarm.retention import run_sweep, storage_report
from buildfarm.state.models import Build, Step, StepOutput
from buildfarm_cli.main import app

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context
from helpers import free_port
from httpkit import serving_repos

MONTH_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)


@pytest.fixture
def farm(tmp_path: Path, database_url: str) -> Iterator[FarmContext]:
    port = free_port()
    repos = tmp_path / "state" / "repos"
    repos.mkdir(parents=True)
    with serving_repos(repos, port):
        ctx = make_test_context(
            tmp_path,
            database_url,
            repo_port=port,
            retention_keep_newest=1,
            retention_nightly_days=14,
            retention_grace_seconds=0,
        )
        try:
            yield ctx
        finally:
            ctx.db.dispose()


def _build(ctx: FarmContext, root: Path, packages: dict[str, str]) -> int:
    for name, version in packages.items():
        make_package(root, name, version=version, payload=f"{name} {version}")
    manifest = write_manifest(root, sorted(packages))
    build_id = submit_build(ctx, load_manifest(manifest), root, "alice")
    drain(ctx)
    assert control.show_build(ctx, build_id).state == "succeeded"
    return build_id


def _apt(tmp_path: Path, ctx: FarmContext, build_id: int | None, name: str) -> AptClient:
    return AptClient(tmp_path / f"apt-{name}", ctx.repo.sources("proj", "main", build_id).line())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_sweep_removes_expired_builds_everywhere_and_keeps_what_the_kept_build_uses(
    farm: FarmContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _build(farm, tmp_path / "src1", {"oldpkg": "0.1"})
    second = _build(farm, tmp_path / "src2", {"keepme": "1.0", "oldpkg": "1.0"})
    third = _build(farm, tmp_path / "src3", {"keepme": "1.0", "oldpkg": "2.0"})
    with farm.db.session() as session:
        steps = {(s.build_id, s.name): s for s in session.scalars(select(Step))}
        outputs = {(o.step_id, o.filename): o.sha256 for o in session.scalars(select(StepOutput))}
        session.execute(update(Build).where(Build.id.in_([first, second])).values(finished_at=MONTH_AGO))
    assert steps[(third, "keepme")].reused_from == steps[(second, "keepme")].id
    kept_debs = {
        sha
        for (step_id, name), sha in outputs.items()
        if step_id in (steps[(second, "keepme")].id, steps[(third, "oldpkg")].id)
    }
    gone_debs = {
        sha
        for (step_id, name), sha in outputs.items()
        if step_id in (steps[(first, "oldpkg")].id, steps[(second, "oldpkg")].id)
    }
    store = farm.store
    assert isinstance(store, FsArtifactStore)

    latest = _apt(tmp_path, farm, None, "latest")
    latest.update()
    before = {name: latest.download(name).read_bytes() for name in ("keepme", "oldpkg")}
    expired_apts = {b: _apt(tmp_path, farm, b, f"b{b}") for b in (first, second)}
    for client in expired_apts.values():
        client.update()  # served before the sweep
    artifacts, repos = farm.settings.state_dir / "artifacts", farm.settings.state_dir / "repos"
    snapshot = (_tree(artifacts), _tree(repos))

    dry = run_sweep(farm, dry_run=True)
    assert sorted(dry.build_ids) == [first, second] and dry.dry_run
    assert dry.builds_deleted == 1 and dry.builds_reduced == 1
    assert dry.bytes_freed > 0 and dry.objects == len(gone_debs) + 2  # .debs/.buildinfos + 2 sources
    report = storage_report(farm)
    assert report.next_sweep.build_ids == dry.build_ids
    assert {(g.kind, g.branch, g.builds) for g in report.groups} == {("nightly", "main", 3)}
    monkeypatch.setenv("BUILDFARM_STATE_DIR", str(farm.settings.state_dir))
    monkeypatch.setenv("BUILDFARM_DATABASE_URL", farm.db.url)
    monkeypatch.setenv("BUILDFARM_REPO_PORT", str(farm.settings.repository.port))
    monkeypatch.setenv("BUILDFARM_RETENTION_KEEP_NEWEST", "1")
    cli = CliRunner().invoke(app, ["--output", "json", "retention", "run", "--dry-run"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["build_ids"] == dry.build_ids
    assert (_tree(artifacts), _tree(repos)) == snapshot  # the dry runs changed nothing
    expired_apts[first].update()

    size_before = _bytes(artifacts / "objects") + _bytes(artifacts / "logs")
    swept = run_sweep(farm, dry_run=False)
    assert sorted(swept.build_ids) == [first, second] and swept.builds_by_class == {"nightly": 2}
    assert swept.objects == dry.objects and swept.objects_skipped_recent == 0
    assert size_before - (_bytes(artifacts / "objects") + _bytes(artifacts / "logs")) == swept.bytes_freed

    for client in expired_apts.values():
        with pytest.raises(AptError):
            client.update()
    latest.update()
    for name, data in before.items():
        assert latest.download(name).read_bytes() == data
        assert hashlib.sha256(data).hexdigest() in kept_debs
    assert all(store.has(sha) for sha in kept_debs)
    assert not any(store.has(sha) for sha in gone_debs)
    assert store.get_build_manifest(first) is None and store.get_build_manifest(second) is not None
    with farm.db.session() as session:
        assert set(session.scalars(select(Build.id))) == {second, third}
        left = {(s.build_id, s.name) for s in session.scalars(select(Step))}
    assert left == {(second, "keepme"), (third, "keepme"), (third, "oldpkg")}
    assert store.read_log(steps[(second, "keepme")].log_key or "")[0]  # the reused step's log stays
    assert not store.read_log(steps[(second, "oldpkg")].log_key or "")[0]

    again = run_sweep(farm, dry_run=False)
    assert again.objects == again.logs == again.builds_deleted == 0
