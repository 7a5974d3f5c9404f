"""The engine on both production backends at once — Pulp (real pulpcore + pulp_deb) for the
repository and S3 (a real moto server) for artifacts — chosen by settings, as in the chart.

Two branches of one project building the same source: the second reuses the first branch's steps
by input key, so neither S3 nor Pulp stores the packages again; apt gets byte-identical packages
from `<content origin>/pulp/content/<project>/<branch>/latest/`; a failed build leaves latest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pulp_glue.core.context import PulpArtifactContext

from buildfarm.backends.pulp import PulpRepository
from buildfarm.engine import control
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.local.aptclient import AptClient
from buildfarm.model.manifest import load_manifest
from buildfarm.wiring import check_backends, make_repository, make_store

from debpkgs import make_package, write_manifest
from farmkit import drain, make_test_context
from pulpkit import PulpServer, pulp_server  # noqa: F401 - the session's Pulp stack
from s3kit import MotoS3, running_moto_s3


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with running_moto_s3(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def ctx(tmp_path: Path, moto: MotoS3, pulp_server: PulpServer) -> Iterator[FarmContext]:  # noqa: F811
    settings = {
        **moto.settings(),
        **pulp_server.settings(),
    }
    context = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **settings)
    check_backends(context.settings)
    context.store = make_store(context.settings)
    context.repo = make_repository(context.settings)
    yield context
    context.db.dispose()


def _artifacts(repo: PulpRepository, sha256: str) -> int:
    stats: dict[str, int] = {}
    next(
        PulpArtifactContext(repo.ctx).list_iterator(parameters={"sha256": sha256}, batch_size=1, stats=stats),
        None,
    )
    return stats["count"]


def test_two_branches_share_steps_and_storage(ctx: FarmContext, moto: MotoS3, tmp_path: Path) -> None:
    assert isinstance(ctx.repo, PulpRepository)
    src = tmp_path / "src"
    make_package(src, "prod-lib")
    make_package(src, "prod-tool", build_depends=("prod-lib",))
    names = ["prod-lib", "prod-tool"]
    first = submit_build(
        ctx, load_manifest(write_manifest(src, names, project="prod", branch="main")), src, "a"
    )
    drain(ctx)
    view = control.show_build(ctx, first)
    assert view.state == "succeeded", view
    bucket = ctx.settings.storage.s3_bucket
    objects_after_main = moto.object_names(bucket, "sha256/")
    debs = {s.name: next(o for o in s.outputs if o["filename"].endswith(".deb")) for s in view.steps}

    manifest = write_manifest(src, names, project="prod", branch="r/stx.9.0")
    second = submit_build(ctx, load_manifest(manifest), src, "b")
    drain(ctx)
    other = control.show_build(ctx, second)
    assert other.state == "succeeded", other
    assert {s.state for s in other.steps} == {"reused"}
    assert moto.object_names(bucket, "sha256/") == objects_after_main  # S3: nothing new
    for deb in debs.values():
        assert _artifacts(ctx.repo, deb["sha256"]) == 1  # Pulp: each .deb stored once

    source = ctx.repo.sources("prod", "r/stx.9.0")
    assert source.url.startswith(f"{ctx.settings.pulp.content_origin}/pulp/content/prod/")
    apt = AptClient(tmp_path / "apt", source.line())
    apt.update()
    for name, deb in debs.items():
        data = apt.download(name).read_bytes()
        fetched = tmp_path / f"{name}.deb"
        ctx.store.fetch(deb["sha256"], fetched)
        assert data == fetched.read_bytes()

    make_package(src, "prod-lib", version="2.0", build="echo broken; exit 1")
    failed = submit_build(ctx, load_manifest(manifest), src, "b")
    drain(ctx)
    assert control.show_build(ctx, failed).state == "failed"
    after = AptClient(tmp_path / "apt-after", ctx.repo.sources("prod", "r/stx.9.0").line())
    after.update()
    assert after.download("prod-lib").read_bytes() == apt.download("prod-lib").read_bytes()
