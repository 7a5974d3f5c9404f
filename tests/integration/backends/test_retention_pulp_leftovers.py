"""What crashed builds leave in Pulp (retention, issue 7 follow-up), on the session's real Pulp.

A build that crashed between writing its repository version and publishing it leaves a version
no distribution serves: made here with the repository's own steps (the merge into the branch,
the snapshot into the unpromoted repository), without the publication that would follow.  The
sweep removes those versions and nothing a kept build or ``latest`` serves; after Pulp's orphan
cleanup, what only they held is gone and apt still gets byte-identical packages from the kept
builds.  Each test sweeps its own project's repositories only (``within``), so tests sharing the
server never see each other's versions.
"""

from __future__ import annotations

import datetime as dt
import time
import typing as t
from pathlib import Path

import pytest
from pulp_glue.common.exceptions import PulpEntityNotFound, PulpHTTPError
from pulp_glue.core.context import PulpArtifactContext

from buildfarm.backends.base import AptSource, BuildRef, PackageFile, VersionedPackageRepository
from buildfarm.backends.pulp import PulpRepository
from buildfarm.backends.pulp.contexts import PulpAptRepositoryContext, PulpAptRepositoryVersionContext
from buildfarm.backends.pulp.expire import is_build_repository, sweep_leftover_versions
from buildfarm.backends.pulp.layout import REPOSITORY_PREFIX, branch_place
from buildfarm.local.aptclient import AptClient

from debpkgs import DebFactory, unique_debs
from pulpkit import PulpServer, pulp_server

HTTP_NOT_FOUND = 404
pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests


@pytest.fixture
def make_deb(tmp_path: Path) -> DebFactory:
    return unique_debs(tmp_path)


@pytest.fixture(scope="module")
def repo(pulp_server: PulpServer) -> PulpRepository:
    return pulp_server.repository(orphan_protection_minutes=0)


def ref(project: str, build_id: int, kind: str = "nightly") -> BuildRef:
    return BuildRef(build_id=build_id, project=project, branch="main", kind=kind, user="alice")


def _crash_after_version(repo: PulpRepository, repository: str, package: PackageFile, *, merge: bool) -> str:
    """What ``publish`` writes before its publication, as a build that died right then left it."""
    units = repo._units([package])
    record = repo._read(repository)
    if merge:
        version, fresh, _ = repo._merge_into(repository, units, record)
    else:
        version, fresh = repo._snapshot_into(repository, record["latest_version_href"], units)
    assert fresh
    return version


def _exists(repo: PulpRepository, repository: str, version: str) -> bool:
    context = PulpAptRepositoryVersionContext(
        repo.ctx, PulpAptRepositoryContext(repo.ctx, pulp_href=repository), pulp_href=version
    )
    try:
        context.entity  # noqa: B018 - the lookup is the question
    except PulpEntityNotFound:
        return False
    except PulpHTTPError as exc:
        if exc.status_code == HTTP_NOT_FOUND:
            return False
        raise
    return True


def _artifacts(repo: PulpRepository, package: PackageFile) -> int:
    stats: dict[str, int] = {}
    next(
        PulpArtifactContext(repo.ctx).list_iterator(parameters={"sha256": package.sha256}, stats=stats), None
    )
    return stats["count"]


def _download(tmp_path: Path, source: AptSource, name: str) -> bytes:
    client = AptClient(tmp_path / f"apt-{time.time_ns()}", source.line())
    client.update()
    return client.download(name).read_bytes()


def test_build_repository_names() -> None:
    assert is_build_repository("buildfarm/p/main")
    assert is_build_repository("buildfarm/p/main/unpromoted")
    assert is_build_repository("buildfarm/p/_personal/alice")
    assert not is_build_repository("buildfarm/p/main/staging/7")
    assert not is_build_repository("buildfarm/_mirrors/debian")
    assert not is_build_repository("other/p/main")


def test_sweep_removes_versions_crashed_builds_left_and_keeps_what_builds_serve(
    repo: PulpRepository, make_deb: DebFactory, tmp_path: Path
) -> None:
    assert isinstance(repo, VersionedPackageRepository)
    project = f"left{time.time_ns()}"
    place = branch_place(project, "main")
    within = f"{REPOSITORY_PREFIX}/{project}"
    first, second = make_deb("bf-left", "1.0"), make_deb("bf-left", "2.0")
    crashed, third = make_deb("bf-left", "2.5"), make_deb("bf-left", "3.0")
    side, side_crashed, side_next = (make_deb(n, "1.0") for n in ("bf-side", "bf-side-crash", "bf-side-next"))

    repo.publish(ref(project, 1), [first], move_latest=True)
    kept = repo.publish(ref(project, 2), [second], move_latest=True)
    repo.publish(ref(project, 3), [side], move_latest=False)
    branch = t.cast(str, repo._repository(place.branch_repository, create=False))
    unpromoted = t.cast(str, repo._repository(place.side_repository, create=False))
    # Build 4 died after its version of the branch, build 5 after its unpromoted snapshot.
    branch_leftover = _crash_after_version(repo, branch, crashed, merge=True)
    side_leftover = _crash_after_version(repo, unpromoted, side_crashed, merge=False)
    # Later builds wrote newer versions on top: the leftovers are no repository's latest any more.
    repo.publish(ref(project, 6), [third], move_latest=True)
    repo.publish(ref(project, 7), [side_next], move_latest=False)
    served = {
        v: repo._read(r)["latest_version_href"] for v, r in ((branch, branch), (unpromoted, unpromoted))
    }

    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)  # a grace period already past
    assert (
        sweep_leftover_versions(
            repo, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), dry_run=True, within=within
        )
        == 0
    )
    assert sweep_leftover_versions(repo, future, dry_run=True, within=within) == 2
    assert _exists(repo, branch, branch_leftover) and _exists(repo, unpromoted, side_leftover)

    assert sweep_leftover_versions(repo, future, dry_run=False, within=within) == 2
    repo.collect_garbage()

    assert not _exists(repo, branch, branch_leftover) and not _exists(repo, unpromoted, side_leftover)
    for repository, latest in served.items():
        assert repo._read(repository)["latest_version_href"] == latest
    assert [_artifacts(repo, p) for p in (crashed, side_crashed)] == [0, 0]  # only the leftovers held them
    assert [_artifacts(repo, p) for p in (first, second, third, side, side_next)] == [1] * 5
    assert _download(tmp_path, kept, "bf-left") == second.path.read_bytes()
    assert _download(tmp_path, repo.sources(project, "main", 1), "bf-left") == first.path.read_bytes()
    assert _download(tmp_path, repo.sources(project, "main"), "bf-left") == third.path.read_bytes()
    assert (
        _download(tmp_path, repo.sources(project, "main", 7), "bf-side-next") == side_next.path.read_bytes()
    )

    # A second sweep looks only above what the first one saw: nothing.
    assert sweep_leftover_versions(repo, future, dry_run=False, within=within) == 0
