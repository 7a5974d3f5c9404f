"""Expiring builds in the package repositories (retention, issue 7), judged by real apt:
PulpRepository on the session's real Pulp (orphan protection 0, see pulpkit), and the local
profile's LocalAptRepository.

Decided and tested here: expiring the build ``latest`` points at is refused with one clear line
(PermanentError) and deletes nothing; expiring an absent or already expired build is a no-op.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from pulp_glue.common.context import PulpEntityContext
from pulp_glue.core.context import PulpArtifactContext

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import AptSource, BuildRef, PackageFile
from buildfarm.backends.pulp import PulpRepository
from buildfarm.backends.pulp.contexts import PulpAptPublicationContext
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import NotFoundError, PermanentError

from debpkgs import DebFactory, fetch_from, unique_debs
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests


@pytest.fixture
def make_deb(tmp_path: Path) -> DebFactory:
    """Packages whose bytes no other test made, so what Pulp frees is theirs alone."""
    return unique_debs(tmp_path)


@pytest.fixture(scope="module")
def repo(pulp_server: PulpServer) -> PulpRepository:
    return pulp_server.repository(orphan_protection_minutes=0)


def ref(project: str, build_id: int, kind: str = "nightly", user: str = "alice") -> BuildRef:
    return BuildRef(build_id=build_id, project=project, branch="main", kind=kind, user=user)


def _project() -> str:
    return f"ret{time.time_ns()}"


def _apt(tmp_path: Path, source: AptSource) -> AptClient:
    client = AptClient(tmp_path / f"apt-{time.time_ns()}", source.line())
    client.update()
    return client


def _served(source: AptSource) -> bool:
    """Whether Pulp serves the source's Release file (cheaper than apt for the tests that only ask that)."""
    return httpx.get(f"{source.url}dists/{source.suite}/Release", timeout=30).status_code == 200


def _count(context: PulpEntityContext, **parameters: str) -> int:
    stats: dict[str, int] = {}
    next(context.list_iterator(parameters=parameters, batch_size=1, stats=stats), None)
    return stats["count"]


def _artifacts(repo: PulpRepository, package: PackageFile) -> int:
    return _count(PulpArtifactContext(repo.ctx), sha256=package.sha256)


def _media_bytes(pulp_server: PulpServer) -> int:
    media = pulp_server.root / "media"
    return sum(p.stat().st_size for p in media.rglob("*") if p.is_file())


def test_pulp_expire_frees_an_old_build_and_keeps_latest(
    repo: PulpRepository, make_deb: DebFactory, pulp_server: PulpServer, tmp_path: Path
) -> None:
    project = _project()
    old, new = make_deb("bf-ret", "1.0"), make_deb("bf-ret", "2.0")
    old_source = repo.publish(ref(project, 1), [old], move_latest=True)
    repo.publish(ref(project, 2), [new], move_latest=True)
    assert _served(old_source)
    latest = _apt(tmp_path, repo.sources(project, "main"))
    before = _media_bytes(pulp_server)

    repo.expire_build(ref(project, 1))
    repo.collect_garbage()

    with pytest.raises(AptError):  # apt against the expired build's distribution fails
        _apt(tmp_path, old_source)
    with pytest.raises(NotFoundError):
        repo.sources(project, "main", 1)
    fresh = _apt(tmp_path, repo.sources(project, "main"))
    assert fresh.download("bf-ret").read_bytes() == latest.download("bf-ret").read_bytes()
    assert fresh.download("bf-ret").read_bytes() == new.path.read_bytes()
    assert _artifacts(repo, old) == 0 and _artifacts(repo, new) == 1
    assert before - _media_bytes(pulp_server) >= old.size

    repo.expire_build(ref(project, 1))  # again: nothing left, nothing to do
    with pytest.raises(PermanentError, match=r"latest of .* serves"):
        repo.expire_build(ref(project, 2))
    assert _served(repo.sources(project, "main", 2))
    repo.expire_build(ref(project, 99))  # never published


def test_pulp_shared_publication_stays_while_a_kept_build_serves_it(
    repo: PulpRepository, make_deb: DebFactory
) -> None:
    project = _project()
    deb = make_deb("bf-same", "1.0")
    repo.publish(ref(project, 1), [deb], move_latest=True)
    repo.publish(ref(project, 2), [deb], move_latest=True)  # nothing changed: same version, same publication
    repo.publish(ref(project, 3), [make_deb("bf-other", "1.0"), deb], move_latest=True)
    publications = _count(PulpAptPublicationContext(repo.ctx))

    repo.expire_build(ref(project, 1))  # its version is still served by build 2: kept
    assert _count(PulpAptPublicationContext(repo.ctx)) == publications
    assert _served(repo.sources(project, "main", 2))

    repo.expire_build(ref(project, 2))  # now nobody serves it: version and publication go
    assert _count(PulpAptPublicationContext(repo.ctx)) == publications - 1
    repo.collect_garbage()
    assert _artifacts(repo, deb) == 1  # still in build 3 (latest)


def test_pulp_personal_and_unpromoted_builds_expire_completely(
    repo: PulpRepository, make_deb: DebFactory
) -> None:
    project = _project()
    mine, theirs, side = make_deb("bf-mine", "1.0"), make_deb("bf-mine", "2.0"), make_deb("bf-side", "1.0")
    first = repo.publish(ref(project, 5, kind="personal"), [mine], move_latest=True)
    second = repo.publish(ref(project, 6, kind="personal"), [theirs], move_latest=True)
    unpromoted = repo.publish(ref(project, 7), [side], move_latest=False)
    assert "_personal" in first.url and repo.sources(project, "main", 6).url == second.url

    for build_id, kind in ((5, "personal"), (6, "personal"), (7, "nightly")):
        repo.expire_build(ref(project, build_id, kind=kind))
    repo.collect_garbage()

    assert not any(_served(source) for source in (first, second, unpromoted))
    # The latest version of each side repository was replaced by an empty one, so all three go.
    assert [_artifacts(repo, p) for p in (mine, theirs, side)] == [0, 0, 0]


# -- the local profile's repository ------------------------------------------------------------


def test_local_repository_expires_builds_and_collects_leftovers(make_deb: DebFactory, tmp_path: Path) -> None:
    local = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:9")
    old, new = make_deb("bf-loc", "1.0"), make_deb("bf-loc", "2.0")
    local.publish(ref("loc", 1), [old], move_latest=True)
    local.publish(ref("loc", 2), [new], move_latest=True)
    local.publish(ref("loc", 3, kind="personal"), [old], move_latest=False)
    local.stage(ref("loc", 4), [old], fetch_from([old]))
    branch = tmp_path / "repos" / "loc" / "main"

    local.expire_build(ref("loc", 1))
    local.expire_build(ref("loc", 1))
    local.expire_build(ref("loc", 3, kind="personal"))
    local.expire_build(ref("loc", 4))  # a crashed build: its staging goes too
    with pytest.raises(NotFoundError):
        local.sources("loc", "main", 1)
    with pytest.raises(NotFoundError):
        local.sources("loc", "main", 3)
    assert not (branch / "staging" / "4").exists()
    assert (local.sources("loc", "main").url).endswith("/loc/main/latest")
    assert ((branch / "latest") / new.filename).read_bytes() == new.path.read_bytes()
    with pytest.raises(PermanentError, match="latest of loc/main serves"):
        local.expire_build(ref("loc", 2))
    assert (branch / "builds" / "2" / "Release").is_file()

    # What crashed writers leave: a publish's temp tree, a staging generation no link names.
    crashed = branch / "builds" / ".tmp-8-abc"
    crashed.mkdir()
    (crashed / "x.deb").write_bytes(b"x" * 1000)
    orphan = branch / "staging" / ".9-gen-xyz"
    orphan.mkdir(parents=True)
    (orphan / "Packages").write_bytes(b"p" * 500)
    os.link(new.path, orphan / new.filename)  # hard-linked: freeing it frees nothing
    pool = branch / "staging" / ".9-pool" / ("0" * 64)  # the packages of a staging that is gone
    pool.mkdir(parents=True)
    (pool / "x.deb").write_bytes(b"d" * 200)
    assert local.collect_garbage() == 1700
    assert not crashed.exists() and not orphan.exists() and not pool.parent.exists()
    assert local.collect_garbage() == 0
