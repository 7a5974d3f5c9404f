"""Choose the backend objects from settings: the only place that knows which ones exist."""

from __future__ import annotations

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import ArtifactStore, PackageRepository
from buildfarm.backends.fs import FsArtifactStore
from buildfarm.model.settings import Settings
from buildfarm.runners.base import Runner


def make_store(settings: Settings) -> ArtifactStore:
    return FsArtifactStore(settings.state_dir / "artifacts")


def make_repository(settings: Settings) -> PackageRepository:
    return LocalAptRepository(settings.state_dir / "repos", settings.repo_url)


def make_runner(settings: Settings) -> Runner:
    if settings.runner == "host":
        from buildfarm.runners.host import HostRunner

        return HostRunner()
    from buildfarm.runners.sbuild import SbuildRunner

    return SbuildRunner(
        base_tarball=settings.effective_base_tarball,
        distribution=settings.distribution,
        tmpdir=settings.sbuild_tmpdir,
    )
