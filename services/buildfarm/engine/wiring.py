"""Choose the backend objects from settings: the only place that knows which ones exist."""

from __future__ import annotations

from urllib.parse import urlsplit

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import ArtifactStore, PackageRepository
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.backends.signing import ReleaseSigner, signing_home
from buildfarm.model.errors import PermanentError
from buildfarm.model.settings import Settings
from buildfarm.runners.base import Runner


def make_store(settings: Settings) -> ArtifactStore:
    if settings.artifacts == "s3":
        from buildfarm.backends.s3 import S3ArtifactStore

        if not settings.s3_endpoint:
            raise PermanentError("artifacts is s3 but setting s3_endpoint is missing")
        endpoint, secure = settings.s3_endpoint, settings.s3_secure
        if "://" in endpoint:  # the chart passes a URL: the scheme decides https
            parts = urlsplit(endpoint)
            endpoint, secure = parts.netloc, parts.scheme == "https"
        return S3ArtifactStore(
            endpoint,
            settings.secret(settings.s3_access_key, settings.s3_access_key_file, "s3_access_key"),
            settings.secret(settings.s3_secret_key, settings.s3_secret_key_file, "s3_secret_key"),
            settings.s3_bucket,
            secure=secure,
            region=settings.s3_region,
        )
    return FsArtifactStore(settings.state_dir / "artifacts")


def make_repository(settings: Settings) -> PackageRepository:
    if settings.repository == "pulp":
        from buildfarm.backends.pulp import PulpRepository

        if not settings.pulp_url or not settings.pulp_content_origin:
            raise PermanentError("repository is pulp but setting pulp_url or pulp_content_origin is missing")
        return PulpRepository(
            settings.pulp_url,
            settings.pulp_username,
            settings.secret(settings.pulp_password, settings.pulp_password_file, "pulp_password"),
            settings.pulp_content_origin,
            task_timeout_seconds=settings.pulp_task_timeout_seconds,
            http_timeout_seconds=settings.pulp_http_timeout_seconds,
            orphan_protection_minutes=settings.pulp_orphan_protection_minutes,
            mirrors=settings.mirrors,
            mirror_retain_versions=settings.mirror_retain_versions,
            signing_service=settings.pulp_signing_service,
            keyring=settings.signing_keyring,
        )
    signer = None
    if settings.signing_key_file is not None:
        signer = ReleaseSigner(settings.signing_key_file, signing_home(settings.state_dir))
    return LocalAptRepository(
        settings.state_dir / "repos",
        settings.repo_url,
        settings.mirrors,
        signer=signer,
        keyring=settings.signing_keyring,
    )


def make_runner(settings: Settings, store: ArtifactStore | None = None) -> Runner:
    """The runner of this node's steps. Remote runners (kubernetes) hand the store's presigned
    URLs to their pods, so they need ``store``."""
    if settings.runner == "host":
        from buildfarm.runners.host import HostRunner

        return HostRunner()
    if settings.runner == "kubernetes":
        from buildfarm.backends.s3 import S3ArtifactStore
        from buildfarm.runners.kubernetes import KubernetesRunner

        if settings.artifacts != "s3" or not isinstance(store, S3ArtifactStore):
            raise PermanentError("runner kubernetes needs artifacts: s3 (builder pods use presigned URLs)")
        return KubernetesRunner(settings, store)
    from buildfarm.runners.sbuild import SbuildRunner, chroot_root

    tmpdir = chroot_root(settings.sbuild_tmpdir, settings.state_dir)
    if settings.base_tarball is not None:  # a fixed tarball named in the settings, used as is
        return SbuildRunner(
            settings.base_tarball, settings.distribution, tmpdir, apt_proxy=settings.apt_proxy
        )
    from buildfarm.environments import cache_for, spec_for

    return SbuildRunner(
        None,
        settings.distribution,
        tmpdir,
        environments=cache_for(settings),
        spec=spec_for(settings),
        apt_proxy=settings.apt_proxy,
    )


def make_image_runner(settings: Settings) -> Runner:
    """The runner of image steps outside Kubernetes: buildah on this node, pushing to the
    farm's registry; its storage is shared by the farm's nodes (buildah locks it)."""
    from buildfarm.runners.buildah import LocalImageRunner

    return LocalImageRunner(
        storage=settings.cache_dir / "buildah",
        registry_url=settings.registry_url,
        base_tarball=settings.effective_base_tarball,
        distribution=settings.distribution,
        cache_dir=settings.cache_dir,
    )


def check_backends(settings: Settings) -> None:
    """Build both stores and check them: one clear line for an unreachable service, wrong
    credentials or a missing bucket, before any process starts on a broken configuration."""
    make_store(settings).check()
    make_repository(settings).check()
