"""A Pulp branch repository follows the local backend's merge rules (issue 11, finding 7).

The same property as tests/integration/backends/test_aptrepo_branch.py, against the session's real Pulp:
after any sequence of builds (new packages, new versions, rebuilds of one version, failed builds,
builds whose publish fails, personal builds, retries, builds publishing out of order), the
branch's ``latest`` holds exactly the newest successful version of every source package the
branch has built, with that version's binaries only.  Each publish costs ~1 s of Pulp tasks, so
the property runs few, short examples; the two ways the Pulp backend used to differ have a test
of their own.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from buildfarm.backends.base import BuildRef, PackageFile
from buildfarm.backends.pulp import PulpDebPackageContext, PulpRepository
from buildfarm.backends.pulp.layout import branch_place
from buildfarm.local.aptclient import AptClient
from buildfarm.model.errors import PermanentError

from branchkit import Build, Pool, Variant, histories, make_pool, newest
from debpkgs import multiarch_debs
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests

BRANCH = "main"
_projects = itertools.count(1)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    return make_pool(tmp_path_factory.mktemp("pulp-branch-debs"))


@pytest.fixture(scope="module")
def repo(pulp_server: PulpServer) -> PulpRepository:
    return pulp_server.repository()


def _ref(project: str, build_id: int, kind: str = "nightly") -> BuildRef:
    return BuildRef(build_id=build_id, project=project, branch=BRANCH, kind=kind, user="alice")


def _latest(repo: PulpRepository, project: str) -> set[str] | None:
    """sha256 of every package the branch repository's newest version holds (None: no branch)."""
    branch = repo._repository(branch_place(project, BRANCH).branch_repository, create=False)
    if branch is None:
        return None
    return _held(repo, branch)


def _held(repo: PulpRepository, repository: str) -> set[str]:
    listed = PulpDebPackageContext(repo.ctx).list_iterator(
        parameters={"repository_version": repo._read(repository)["latest_version_href"], "fields": ["sha256"]}
    )
    return {entity["sha256"] for entity in listed}


def _files(pool: Pool, variants: dict[str, Variant]) -> set[str]:
    return {p.sha256 for v in variants.values() for p in pool[v]}


def test_a_new_version_takes_away_binaries_it_no_longer_builds(repo: PulpRepository, pool: Pool) -> None:
    """Pulp used to replace by binary name: alpha 2.0 left alpha 1.0's alpha-extra in latest."""
    project = f"pb{next(_projects)}"
    repo.publish(_ref(project, 1), pool[("alpha", "1.0", 0)] + pool[("beta", "1.9", 0)], move_latest=True)
    repo.publish(_ref(project, 2), pool[("alpha", "2.0", 0)], move_latest=True)
    assert _latest(repo, project) == _files(pool, {"alpha": ("alpha", "2.0", 0), "beta": ("beta", "1.9", 0)})


def test_a_build_publishing_after_a_newer_one_reaches_latest(repo: PulpRepository, pool: Pool) -> None:
    """Pulp used to leave latest alone for an older build published late: alpha was lost."""
    project = f"pb{next(_projects)}"
    repo.publish(_ref(project, 2), pool[("beta", "1.9", 0)], move_latest=True)
    repo.publish(_ref(project, 1), pool[("alpha", "1.0", 0)], move_latest=True)
    expected = {"alpha": ("alpha", "1.0", 0), "beta": ("beta", "1.9", 0)}
    assert _latest(repo, project) == _files(pool, expected)
    # A late build of an older version, or an older rebuild of the same version, loses.
    repo.publish(_ref(project, 4), pool[("gamma", "3.0", 1)], move_latest=True)
    repo.publish(_ref(project, 3), pool[("gamma", "3.0", 0)] + pool[("beta", "1.10", 0)], move_latest=True)
    expected |= {"gamma": ("gamma", "3.0", 1), "beta": ("beta", "1.10", 0)}
    assert _latest(repo, project) == _files(pool, expected)


def test_latest_is_installable_after_out_of_order_builds(
    repo: PulpRepository, pool: Pool, tmp_path: Path
) -> None:
    """What apt reads from ``latest`` (the publication Pulp serves), not only the version."""
    project = f"pb{next(_projects)}"
    repo.publish(_ref(project, 3), pool[("alpha", "2.0", 0)], move_latest=True)
    repo.publish(_ref(project, 1), pool[("alpha", "1.0", 0)] + pool[("beta", "1.9", 0)], move_latest=True)
    client = AptClient(tmp_path / "apt", repo.sources(project, BRANCH).line())
    client.update()
    assert client.download("alpha").read_bytes() == pool[("alpha", "2.0", 0)][0].path.read_bytes()
    assert client.download("beta").read_bytes() == pool[("beta", "1.9", 0)][0].path.read_bytes()
    with pytest.raises(Exception, match="alpha-extra"):
        client.download("alpha-extra")


def test_each_architectures_packages_reach_apt_for_that_architecture(
    repo: PulpRepository, tmp_path: Path
) -> None:
    """One source built for amd64 and arm64 (and its Architecture: all package): pulp_deb's
    structured publication indexes each architecture (binary-amd64, binary-arm64, Release's
    Architectures), and apt with arm64 added as a foreign architecture downloads each one's bytes."""
    project = f"pb{next(_projects)}"
    debs = multiarch_debs(tmp_path / "debs", "multi", "1.0", ("amd64", "arm64"))
    repo.publish(_ref(project, 1), debs, move_latest=True)
    client = AptClient(tmp_path / "apt", repo.sources(project, BRANCH).line(), architectures=("arm64",))
    client.update()
    for wanted, deb in zip(("libmulti:amd64", "libmulti:arm64", "multi-doc"), debs, strict=True):
        assert client.download(wanted).read_bytes() == deb.path.read_bytes(), wanted


# Each publish costs ~1 s of Pulp tasks: few, short histories.
_histories = histories(
    kinds=["nightly", "nightly", "nightly", "personal"],
    outcomes=["ok", "ok", "ok", "ok", "failed", "broken"],
    variants=2,
    builds=4,
    publishes=5,
    least=2,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=_histories)
def test_latest_is_the_newest_successful_version_of_every_package(
    repo: PulpRepository, pool: Pool, history: tuple[list[Build], list[int]]
) -> None:
    builds, order = history
    project = f"pb{next(_projects)}"  # each example a branch of its own on the shared server
    published: dict[int, tuple[Variant, ...]] = {}  # the successful non-personal builds, by id
    for index in order:
        build_id, build = index + 1, builds[index]
        if build.outcome == "failed":
            continue  # a failed build never reaches the repository
        packages = [p for v in build.variants for p in pool[v]]
        before = _latest(repo, project)
        if build.outcome == "broken":
            first = packages[0]
            packages[0] = PackageFile(first.filename, "0" * 64, first.size, first.path)
            with pytest.raises(PermanentError, match="does not match its record"):
                repo.publish(
                    _ref(project, build_id, build.kind), packages, move_latest=build.kind != "personal"
                )
            assert _latest(repo, project) == before
            continue
        repo.publish(_ref(project, build_id, build.kind), packages, move_latest=build.kind != "personal")
        if build.kind == "personal":
            assert _latest(repo, project) == before  # personal builds never move latest
        else:
            published[build_id] = build.variants
        if published:
            assert _latest(repo, project) == _files(pool, newest(published))


def test_personal_build_shows_its_own_packages_over_the_branch(repo: PulpRepository, pool: Pool) -> None:
    """Its own distribution: the branch with every package of the build over it, whatever the version."""
    project = f"pb{next(_projects)}"
    repo.publish(_ref(project, 1), pool[("alpha", "2.0", 0)] + pool[("beta", "1.9", 0)], move_latest=True)
    own = repo.publish(_ref(project, 2, "personal"), pool[("alpha", "1.0", 1)], move_latest=False)
    assert own.url.endswith(f"/{project}/_personal/alice/2/")
    assert _latest(repo, project) == _files(pool, {"alpha": ("alpha", "2.0", 0), "beta": ("beta", "1.9", 0)})
    side = repo._repository(branch_place(project, BRANCH, "alice").side_repository, create=False)
    assert side is not None
    assert _held(repo, side) == _files(pool, {"alpha": ("alpha", "1.0", 1), "beta": ("beta", "1.9", 0)})
