"""The package-builder image made from a build environment, pinned by digest in builder Jobs.

Real buildah (vfs, private storage) makes the image from a small environment tarball (a real
EnvironmentCache whose maker writes a small tar naming its package set, instead of a ~450 MB
mmdebstrap one) and pushes it to a real docker-registry; the Kubernetes runner, talking to the
API double (kubekit) with builder pods run locally, resolves the moving tag to the digest when a
build is submitted, puts it in the input keys and names it in the step's Job.  A refresh with a
changed package set makes a new image digest, new input keys, and Jobs naming the new image,
while a step of the earlier build still names the image its key was computed with.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from envkit import TarMaker
from sqlalchemy import select

from buildfarm.backends.base import PackageCache
from buildfarm.backends.httpserve import make_server
from buildfarm.backends.registry import RegistryClient
from buildfarm.dispatch import tasks
from buildfarm.engine.advance import advance_build
from buildfarm.engine.context import FarmContext
from buildfarm.engine.steps import run_step
from buildfarm.engine.submit import submit_build
from buildfarm.environments import Environment, EnvironmentCache, EnvironmentSpec
from buildfarm.model.images import registry_host
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import Settings
from buildfarm.runners import builderimage
from buildfarm.runners.base import StepJob
from buildfarm.runners.builderimage import (
    BUILDER_REPOSITORY,
    ENVIRONMENT_LABEL,
    ensure_builder_image,
    image_staleness,
    make_builder_images,
)
from buildfarm.runners.kubernetes import KubernetesRunner
from buildfarm.runners.sbuild import BUILDER_PACKAGES
from buildfarm.state.models import Build, Step, TaskRun
from buildfarm.wiring import make_package_cache, make_store

from debpkgs import make_package, write_manifest
from farmkit import dispatcher, make_test_context
from helpers import free_port
from kubekit import FakeCluster, fake_cluster
from registrykit import Registry, running_registry
from s3kit import MotoS3, running_moto_s3

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[3]
ENTRYPOINT = REPO / "buildtools" / "builder" / "buildfarm-step"
NAMESPACE = "builders"


def small_maker(spec: EnvironmentSpec, dest: Path, proxy: str | None = None, progress: object = None) -> str:
    """A real tarball whose bytes follow the recipe (what mmdebstrap's would do, in a few KiB)."""
    with tarfile.open(dest, "w") as tar:
        for name, text in (
            ("etc/buildfarm-packages", "\n".join(spec.packages) + "\n"),
            ("etc/hostname", "b\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1700000000
            tar.addfile(info, io.BytesIO(data))
    return ""


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[Registry, MotoS3, FakeCluster]]:
    for part in ("moto", "cluster"):
        (tmp_path / part).mkdir()
    with (
        running_registry(tmp_path / "registry") as registry,
        running_moto_s3(tmp_path / "moto") as moto,
        fake_cluster(tmp_path / "cluster") as cluster,
    ):
        yield registry, moto, cluster


def _context(tmp_path: Path, registry: Registry, moto: MotoS3, cluster: FakeCluster) -> Iterator[FarmContext]:
    port = free_port()
    ctx = make_test_context(
        tmp_path,
        f"sqlite:///{tmp_path / 'state.db'}",
        cache_dir=tmp_path / "cache",  # never the machine's environments: a fake one would be current there
        runner="kubernetes",
        **moto.settings(),
        kubeconfig=cluster.kubeconfig(tmp_path / "kubeconfig"),
        builder_namespace=NAMESPACE,
        builder_image=f"{registry_host(registry.url)}/{BUILDER_REPOSITORY}:current",
        registry_url=registry.url,
        repo_port=port,
    )
    ctx.store = make_store(ctx.settings)
    repos = make_server(ctx.settings.state_dir / "repos", port=port)  # staging repos over HTTP
    threading.Thread(target=repos.serve_forever, daemon=True).start()
    try:
        yield ctx
    finally:
        repos.shutdown()
        repos.server_close()
        ctx.db.dispose()


def _submit(ctx: FarmContext, src: Path) -> tuple[int, Step]:
    build_id = submit_build(ctx, load_manifest(write_manifest(src, ["envpin"])), src, "alice")
    rec = dispatcher(ctx)
    while rec.advances:
        advance_build(ctx, rec.advances.pop(0))
    with ctx.db.session() as session:
        step = session.scalars(select(Step).where(Step.build_id == build_id)).one()
        session.expunge(step)
    return build_id, step


def _environment_id(ctx: FarmContext, build_id: int) -> str:
    with ctx.db.session() as session:
        return session.get_one(Build, build_id).environment_id


def _image(registry: Registry, env: Environment, tmp_path: Path) -> str:
    return ensure_builder_image(env, ENTRYPOINT, registry.url, tmp_path / "buildah").reference


def test_builder_image_from_environment_is_pinned_by_digest(
    tmp_path: Path, services: tuple[Registry, MotoS3, FakeCluster]
) -> None:
    registry, moto, cluster = services
    cache = EnvironmentCache(tmp_path / "envs", maker=small_maker)
    spec = EnvironmentSpec("bookworm", "amd64", "http://mirror.invalid/debian", ("python3",))
    env = cache.ensure(spec)
    first = ensure_builder_image(env, ENTRYPOINT, registry.url, tmp_path / "buildah")
    assert first.built and first.reference.endswith(f"@{first.digest}")
    # the image's one layer is the environment, its label names it, its entrypoint is buildfarm-step
    client = RegistryClient(registry.url)
    manifest, digest, _ = client.manifest(BUILDER_REPOSITORY, "current")
    assert digest == first.digest
    client.fetch_blob(BUILDER_REPOSITORY, manifest["config"]["digest"], tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    assert config["Labels"][ENVIRONMENT_LABEL] == env.digest
    assert config["Entrypoint"] == ["/usr/local/bin/buildfarm-step"]
    # an unchanged environment keeps its image: nothing built, same digest
    again = ensure_builder_image(env, ENTRYPOINT, registry.url, tmp_path / "buildah")
    assert (again.built, again.digest) == (False, first.digest)

    contexts = _context(tmp_path, registry, moto, cluster)
    ctx = next(contexts)
    try:
        runner = ctx.runner
        assert isinstance(runner, KubernetesRunner)
        runner.poll_seconds = 0.1
        src = tmp_path / "src"
        make_package(src, "envpin", build="echo building envpin")
        build1, step1 = _submit(ctx, src)
        assert _environment_id(ctx, build1) == f"kubernetes:{first.reference}"
        assert run_step(ctx, step1.id, "node1") == "succeeded"
        (job,) = cluster.created
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == first.reference  # by digest, never by the moving tag

        # refresh with a changed package set: a new environment, a new image digest, new keys
        env2 = cache.refresh(replace(spec, packages=("python3", "ca-certificates")))
        assert env2.digest != env.digest
        second = ensure_builder_image(env2, ENTRYPOINT, registry.url, tmp_path / "buildah")
        assert second.built and second.digest != first.digest
        build2, step2 = _submit(ctx, src)
        assert _environment_id(ctx, build2) == f"kubernetes:{second.reference}"
        assert step2.input_key != step1.input_key  # not reused: the environment changed
        assert run_step(ctx, step2.id, "node1") == "succeeded"
        assert cluster.created[-1]["spec"]["template"]["spec"]["containers"][0]["image"] == second.reference
        # a step of the first build (a retry) still runs in the image its input key names
        retry = StepJob(
            build_id=build1,
            step_name=step1.name,
            attempt=2,
            source_tarball=tmp_path / "unused",
            workdir=tmp_path,
            extra_sources=[],
            log=lambda _line: None,
            environment_id=_environment_id(ctx, build1),
        )
        assert runner.image_of(retry) == first.reference
        # the same environment submitted again: the same key, so the step is reused
        _build3, step3 = _submit(ctx, src)
        assert step3.input_key == step2.input_key
    finally:
        contexts.close()


def _task_runs(ctx: FarmContext) -> list[TaskRun]:
    with ctx.db.session() as session:
        runs = list(
            session.scalars(select(TaskRun).where(TaskRun.task == "env_refresh").order_by(TaskRun.id))
        )
        session.expunge_all()
    return runs


def test_nightly_refresh_remakes_the_builder_images_of_a_kubernetes_farm(
    tmp_path: Path, services: tuple[Registry, MotoS3, FakeCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler's env_refresh on a Kubernetes farm (the task body, as a worker runs it):
    the environment and the cross environment with an image made afresh, images rebuilt only
    when the environment moved, tags moved; keys follow.  A node without buildah says why."""
    registry, moto, cluster = services
    maker = TarMaker()
    routed = builderimage.routed_environments

    def small_routed(
        settings: Settings, packages: PackageCache, *, refresh: bool, include: tuple[str, ...] | None
    ) -> tuple[EnvironmentCache, EnvironmentSpec]:
        cache, spec = routed(settings, packages, refresh=refresh, include=include)  # the real routing
        return EnvironmentCache(cache.root, maker=maker), spec

    monkeypatch.setattr(builderimage, "routed_environments", small_routed)
    contexts = _context(tmp_path, registry, moto, cluster)
    ctx = next(contexts)
    monkeypatch.setattr(tasks, "farm_context", lambda: ctx)
    client = RegistryClient(registry.url)
    try:
        # the operator's `buildfarm env image` and `--cross arm64` once after install
        packages = make_package_cache(ctx.settings)
        installed = make_builder_images(ctx.settings, packages, refresh=False, cross=(None, "arm64"))
        assert [m.image.built for m in installed] == [True, True]
        first, cross_first = (m.image.digest for m in installed)
        src = tmp_path / "src"
        make_package(src, "envpin", build="echo building envpin")
        build1, step1 = _submit(ctx, src)
        assert _environment_id(ctx, build1).endswith(f"@{first}")

        tasks.env_refresh.run()  # the mirror did not move: nothing rebuilt, keys reused
        (run,) = _task_runs(ctx)
        assert run.ok and run.detail.count("(unchanged,") == 2, run.detail
        assert client.manifest(BUILDER_REPOSITORY, "current")[1] == first
        assert _submit(ctx, src)[1].input_key == step1.input_key

        maker.extra = " security update"
        tasks.env_refresh.run()  # the mirror moved: both images remade, both tags moved
        run = _task_runs(ctx)[-1]
        assert run.ok and run.detail.count("(new,") == 2, run.detail
        second = client.manifest(BUILDER_REPOSITORY, "current")[1]
        assert second != first
        assert client.manifest(BUILDER_REPOSITORY, "current-cross-arm64")[1] != cross_first
        build3, step3 = _submit(ctx, src)
        assert _environment_id(ctx, build3).endswith(f"@{second}")
        assert step3.input_key != step1.input_key  # a refreshed image never reuses old outputs

        include = (*ctx.settings.buildenv.packages, *BUILDER_PACKAGES)
        cache, spec = builderimage.routed_environments(ctx.settings, packages, refresh=False, include=include)
        fresh = image_staleness(ctx.settings, cache.entries())  # `buildfarm env list`'s line
        assert fresh.startswith(f"{ctx.settings.builders.image} was made 20") and "stale" not in fresh

        # a node that cannot make images (the chart's worker pods): a failed run that says why
        no_buildah = tmp_path / "bin"
        no_buildah.mkdir()
        (no_buildah / "mmdebstrap").symlink_to(shutil.which("mmdebstrap") or "/usr/bin/mmdebstrap")
        monkeypatch.setenv("PATH", str(no_buildah))
        maker.extra = " another update"
        tasks.env_refresh.run()
        run = _task_runs(ctx)[-1]
        assert not run.ok
        assert "cannot make it (buildah not installed here)" in run.detail
        assert f"{ctx.settings.builders.image} was made 20" in run.detail
        assert "run `buildfarm env image --refresh`" in run.detail
        assert client.manifest(BUILDER_REPOSITORY, "current")[1] == second
        cache.refresh(spec)  # the environment refreshed where no image was made of it
        stale = image_staleness(ctx.settings, cache.entries())
        assert stale.startswith("stale: ") and "run `buildfarm env image --refresh`" in stale
    finally:
        contexts.close()
