"""The retention sweep on the production backends: real Pulp (pulpcore + pulp_deb, orphan
protection 0: see pulpkit) and a real S3 server (moto), with builds made by the engine.

Two builds of one branch: an old nightly and a newer release (which also moved ``latest``).
After ``run_sweep`` thirty days later: apt against the nightly's distribution fails, apt against
the release still gets byte-identical packages, and both Pulp's storage (its MEDIA_ROOT on disk)
and the S3 bucket (objects and bytes) have shrunk by at least the nightly's own packages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from pulp_glue.core.context import PulpArtifactContext

from buildfarm.backends.pulp import PulpRepository
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.manifest import load_manifest
from buildfarm.retention import run_sweep
from buildfarm.wiring import check_backends, make_repository, make_store

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context
from pulpkit import PulpServer, pulp_server  # noqa: F401 - the session's Pulp stack
from s3kit import MotoS3, running_moto_s3

pytestmark = pytest.mark.integration

PROJECT = "retsrv"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def ctx(tmp_path: Path, moto: MotoS3, pulp_server: PulpServer) -> Iterator[FarmContext]:  # noqa: F811
    settings = {
        **moto.settings(),
        **pulp_server.settings(),
        "retention_keep_newest": 1,  # the nightly is not protected as one of the newest builds
    }
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **settings)
    check_backends(context.settings)
    context.store = make_store(context.settings)
    context.repo = make_repository(context.settings)
    yield context
    context.db.dispose()


def _bucket(moto: MotoS3, bucket: str) -> tuple[int, int]:
    objects = list(moto.client().list_objects(bucket, recursive=True))
    return len(objects), sum(int(o.size or 0) for o in objects)


def _media_bytes(pulp_server: PulpServer) -> int:  # noqa: F811
    return sum(p.stat().st_size for p in (pulp_server.root / "media").rglob("*") if p.is_file())


def _debs(ctx: FarmContext, build_id: int) -> dict[str, dict[str, object]]:
    view = control.show_build(ctx, build_id)
    assert view.state == "succeeded", view
    return {s.name: next(o for o in s.outputs if str(o["filename"]).endswith(".deb")) for s in view.steps}


def _apt(tmp_path: Path, ctx: FarmContext, build_id: int) -> AptClient:
    client = AptClient(tmp_path / f"apt-{build_id}", ctx.repo.sources(PROJECT, "main", build_id).line())
    client.update()
    return client


def test_sweep_expires_a_nightly_everywhere_and_keeps_the_release(
    ctx: FarmContext,
    moto: MotoS3,
    pulp_server: PulpServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert isinstance(ctx.repo, PulpRepository)
    src = tmp_path / "src"
    make_package(src, "ret-tool", version="1.0")
    nightly = submit_build(ctx, load_manifest(write_manifest(src, ["ret-tool"], project=PROJECT)), src, "a")
    drain(ctx)
    old_deb = _debs(ctx, nightly)["ret-tool"]
    nightly_source = ctx.repo.sources(PROJECT, "main", nightly)
    _apt(tmp_path, ctx, nightly)  # served before the sweep

    make_package(src, "ret-tool", version="2.0")
    manifest = write_manifest(src, ["ret-tool"], project=PROJECT, kind="release")
    release = submit_build(ctx, load_manifest(manifest), src, "a")
    drain(ctx)
    new_deb = _debs(ctx, release)["ret-tool"]
    before_apt = _apt(tmp_path / "before", ctx, release).download("ret-tool").read_bytes()
    bucket = ctx.settings.storage.s3_bucket
    objects_before, bytes_before = _bucket(moto, bucket)
    media_before = _media_bytes(pulp_server)

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    report = run_sweep(ctx, dry_run=False, now=later)

    assert nightly in report.build_ids and release not in report.build_ids
    with pytest.raises(AptError):  # the nightly's distribution is gone
        AptClient(tmp_path / "apt-expired", nightly_source.line()).update()
    after_apt = _apt(tmp_path / "after", ctx, release).download("ret-tool").read_bytes()
    fetched = tmp_path / "release.deb"
    ctx.store.fetch(str(new_deb["sha256"]), fetched)
    assert after_apt == before_apt == fetched.read_bytes()
    latest = AptClient(tmp_path / "apt-latest", ctx.repo.sources(PROJECT, "main").line())
    latest.update()
    assert latest.download("ret-tool").read_bytes() == after_apt

    # Storage shrank, measured: S3 objects and bytes, Pulp's files on disk and its artifacts.
    objects_after, bytes_after = _bucket(moto, bucket)
    assert objects_after < objects_before
    assert bytes_before - bytes_after >= int(str(old_deb["size"]))
    assert not ctx.store.has(str(old_deb["sha256"]))
    assert ctx.store.has(str(new_deb["sha256"]))
    assert media_before - _media_bytes(pulp_server) >= int(str(old_deb["size"]))
    stats: dict[str, int] = {}
    next(
        PulpArtifactContext(ctx.repo.ctx).list_iterator(
            parameters={"sha256": old_deb["sha256"]}, batch_size=1, stats=stats
        ),
        None,
    )
    assert stats["count"] == 0
    print(
        f"retention sweep: S3 {objects_before}->{objects_after} objects, "
        f"{bytes_before}->{bytes_after} bytes; Pulp media {media_before}->{_media_bytes(pulp_server)} bytes; "
        f"sweep {report.seconds:.2f}s"
    )

    again = run_sweep(ctx, dry_run=False, now=later)  # nothing left to expire
    assert again.build_ids == []
