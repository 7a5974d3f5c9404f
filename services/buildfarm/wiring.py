"""Choose the backend objects and runners from settings: the only place that knows which exist.

Everything else receives what is built here: the two stores and the dispatcher directly in the
:class:`~buildfarm.engine.context.FarmContext`, and the runners, the registry client and the
backup target through :class:`Wiring` (the context's ``parts``), built on first use.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import (
    ArtifactStore,
    BackupTarget,
    ImageRegistry,
    PackageCache,
    PackageRepository,
)
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.backends.signing import ReleaseSigner, signing_home
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import Settings
from buildfarm.runners.base import Runner


def make_store(settings: Settings) -> ArtifactStore:
    storage = settings.storage
    if storage.kind == "s3":
        from buildfarm.backends.s3 import S3ArtifactStore

        if not storage.s3_endpoint:
            raise PermanentError("artifacts is s3 but setting s3_endpoint is missing")
        endpoint, secure = storage.s3_endpoint, storage.s3_secure
        if "://" in endpoint:  # the chart passes a URL: the scheme decides https
            parts = urlsplit(endpoint)
            endpoint, secure = parts.netloc, parts.scheme == "https"
        access, secret = storage.s3_credentials()
        return S3ArtifactStore(
            endpoint, access, secret, storage.s3_bucket, secure=secure, region=storage.s3_region
        )
    return FsArtifactStore(settings.state_dir / "artifacts")


def make_repository(settings: Settings) -> PackageRepository:
    if settings.repository.kind == "pulp":
        from buildfarm.backends.pulp import PulpRepository

        pulp = settings.pulp
        if not pulp.url or not pulp.content_origin:
            raise PermanentError("repository is pulp but setting pulp_url or pulp_content_origin is missing")
        return PulpRepository(
            pulp.url,
            pulp.username,
            pulp.password_value(),
            pulp.content_origin,
            task_timeout_seconds=pulp.task_timeout_seconds,
            http_timeout_seconds=pulp.http_timeout_seconds,
            orphan_protection_minutes=pulp.orphan_protection_minutes,
            mirrors=settings.mirrors.repositories,
            mirror_retain_versions=settings.mirrors.retain_versions,
            signing_service=settings.signing.pulp_service,
            keyring=settings.signing.keyring,
        )
    signer = None
    if settings.signing.key_file is not None:
        signer = ReleaseSigner(settings.signing.key_file, signing_home(settings.state_dir))
    return LocalAptRepository(
        settings.state_dir / "repos",
        settings.repository.url,
        settings.mirrors.repositories,
        signer=signer,
        keyring=settings.signing.keyring,
    )


def make_package_cache(settings: Settings) -> PackageCache:
    """The farm-side package cache builds download Debian's packages through: with the Pulp
    repository backend, Pulp's on-demand distributions of the upstreams (production); else the
    HTTP proxy ``apt_proxy`` (the local profile's apt-cacher-ng), or none (setting ``package_cache``)."""
    if settings.repository.kind == "pulp" and settings.buildenv.package_cache == "auto":
        from buildfarm.backends.pulp.client import PulpClient
        from buildfarm.backends.pulp.packagecache import PulpPackageCache

        pulp = settings.pulp
        if not pulp.url or not pulp.content_origin:
            raise PermanentError("repository is pulp but setting pulp_url or pulp_content_origin is missing")
        client = PulpClient(
            pulp.url,
            pulp.username,
            pulp.password_value(),
            task_timeout_seconds=pulp.task_timeout_seconds,
            http_timeout_seconds=pulp.http_timeout_seconds,
        )
        return PulpPackageCache(
            client,
            pulp.content_origin,
            settings.mirrors.retain_versions,
            signing_service=settings.signing.pulp_service,
            keyring=settings.signing.keyring,
        )
    from buildfarm.backends.aptproxy import ProxyPackageCache

    return ProxyPackageCache(settings.buildenv.apt_proxy)


def make_runner(settings: Settings, store: ArtifactStore | None = None) -> Runner:
    """The runner of this node's steps. Remote runners (kubernetes) hand the store's presigned
    URLs to their pods, so they need ``store``."""
    if settings.builders.runner == "host":
        from buildfarm.runners.host import HostRunner

        return HostRunner()
    if settings.builders.runner == "kubernetes":
        from buildfarm.backends.s3 import S3ArtifactStore
        from buildfarm.runners.kubernetes import KubernetesRunner

        if settings.storage.kind != "s3" or not isinstance(store, S3ArtifactStore):
            raise PermanentError("runner kubernetes needs artifacts: s3 (builder pods use presigned URLs)")
        return KubernetesRunner(
            settings.builders, settings.registry, store, mirrored=bool(settings.mirrors.repositories)
        )
    from buildfarm.runners.base import chroot_root
    from buildfarm.runners.envrunner import EnvironmentRunner
    from buildfarm.runners.sbuild import SbuildRunner
    from buildfarm.runners.unshare import UnshareRunner

    env = settings.buildenv
    tmpdir = chroot_root(env.sbuild_tmpdir, settings.state_dir)
    kind: type[EnvironmentRunner] = UnshareRunner if settings.builders.runner == "unshare" else SbuildRunner
    if env.base_tarball is not None:  # a fixed tarball named in the settings, used as is
        return kind(env.base_tarball, env.distribution, tmpdir, apt_proxy=env.apt_proxy)
    from buildfarm.environments import layers_for, routed_environments

    route = make_package_cache(settings)
    environments, spec = routed_environments(settings, route)  # the runner's recipe (spec_for)
    return kind(
        None,
        env.distribution,
        tmpdir,
        environments=environments,
        spec=spec,
        apt_proxy=environments.proxy,
        layers=layers_for(settings),
    )


def make_image_runner(settings: Settings) -> Runner:
    """The runner of image steps outside Kubernetes: buildah on this node, pushing to the
    farm's registry; its storage is shared by the farm's nodes (buildah locks it)."""
    from buildfarm.runners.buildah import LocalImageRunner

    return LocalImageRunner(
        storage=settings.buildenv.cache_dir / "buildah",
        registry_url=settings.registry.url,
        base_tarball=settings.buildenv.tarball,
        distribution=settings.buildenv.distribution,
        cache_dir=settings.buildenv.cache_dir,
    )


def check_backends(settings: Settings) -> None:
    """Build both stores and check them: one clear line for an unreachable service, wrong
    credentials or a missing bucket, before any process starts on a broken configuration."""
    make_store(settings).check()
    make_repository(settings).check()


def make_registry(settings: Settings) -> ImageRegistry:
    """The farm's registry client, with the farm's account; on the local profile it can also run
    the registry's garbage collector (its configuration is written by ``buildfarm start``)."""
    from buildfarm.backends.registrycopy import RegistryCopier

    if not settings.registry.url:
        raise PermanentError("no container registry: set registry_url (BUILDFARM_REGISTRY_URL)")
    local_config = settings.state_dir / "registry" / "config.yml"
    return RegistryCopier(
        settings.registry.url,
        gc_config=local_config if local_config.is_file() else None,
        auth=settings.registry.auth(),
    )


class Wiring:
    """:class:`buildfarm.engine.context.FarmParts` from settings; each part built once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._registry: ImageRegistry | None = None

    def runner(self, store: ArtifactStore) -> Runner:
        return make_runner(self.settings, store)

    def image_runner(self) -> Runner:
        return make_image_runner(self.settings)

    def registry(self) -> ImageRegistry:
        if self._registry is None:
            self._registry = make_registry(self.settings)
        return self._registry

    def backup_target(self) -> BackupTarget:
        from buildfarm.backends.backuptarget import make_backup_target  # minio: not at every CLI start

        return make_backup_target(self.settings.backup, self.settings.storage)
