"""A local branch repository carries its packages forward, as Pulp's does (issue 11, finding 7).

The property: after any sequence of builds (new packages, new versions, rebuilds of one version,
failed builds, builds whose publish fails, personal builds, retries, builds publishing out of
order), ``latest`` holds exactly the newest successful version of every source package the branch
has built, with that version's binaries only.  Driven on the backend directly with real .deb files
(dpkg-deb) and real indexes (apt-ftparchive); one test reads the result with the real apt.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from debian.deb822 import Packages
from hypothesis import HealthCheck, given, settings

from buildfarm.backends import apttree
from buildfarm.backends.aptbranch import STATE_FILE
from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import BuildRef, PackageFile
from buildfarm.local.aptclient import AptClient
from buildfarm.model.errors import PermanentError

from branchkit import Build, Pool, Variant, histories, make_pool, newest
from debpkgs import multiarch_debs
from httpkit import serving_repos

pytestmark = pytest.mark.integration

PROJECT = "examples"
BRANCH = "main"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    return make_pool(tmp_path_factory.mktemp("branch-debs"))


_histories = histories(
    kinds=["nightly", "nightly", "personal"],
    outcomes=["ok", "ok", "ok", "failed", "broken"],
    variants=3,
    builds=6,
    publishes=8,
)


def _index(tree: Path) -> set[tuple[str, str]]:
    """(file name, sha256) of every package the tree's Packages index lists."""
    with (tree / "Packages").open("rb") as handle:
        listed = {
            (p["Filename"].removeprefix("./"), p["SHA256"])
            for p in Packages.iter_paragraphs(handle, use_apt_pkg=False)
        }
    on_disk = {p.name for p in tree.iterdir() if p.name.endswith(".deb")}
    assert on_disk == {name for name, _ in listed}, "the tree holds exactly what its index lists"
    return listed


def _files(pool: Pool, variants: dict[str, Variant]) -> set[tuple[str, str]]:
    return {(p.filename, p.sha256) for v in variants.values() for p in pool[v]}


def _ref(build_id: int, kind: str) -> BuildRef:
    return BuildRef(build_id=build_id, project=PROJECT, branch=BRANCH, kind=kind, user="alice")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=_histories)
def test_latest_is_the_newest_successful_version_of_every_package(
    pool: Pool, history: tuple[list[Build], list[int]]
) -> None:
    builds, order = history
    with tempfile.TemporaryDirectory(prefix="branch-") as scratch:
        repo = LocalAptRepository(Path(scratch) / "repos", "http://127.0.0.1:9/")
        branch = repo.root / PROJECT / BRANCH
        published: dict[int, tuple[Variant, ...]] = {}  # the successful non-personal builds, by id
        personal_done: set[int] = set()
        for index in order:
            build_id, build = index + 1, builds[index]
            if build.outcome == "failed":
                continue  # a failed build never reaches the repository
            packages = [p for v in build.variants for p in pool[v]]
            if build.outcome == "broken":
                first = packages[0]
                packages[0] = PackageFile(first.filename, "0" * 64, first.size, first.path)
                before = _index(branch / "latest") if (branch / "latest").exists() else None
                with pytest.raises(PermanentError, match="does not match its record"):
                    repo.publish(_ref(build_id, build.kind), packages, move_latest=build.kind != "personal")
                assert (_index(branch / "latest") if (branch / "latest").exists() else None) == before
                assert not (branch / "builds" / str(build_id)).exists()
                continue
            base = newest(published)
            source = repo.publish(_ref(build_id, build.kind), packages, move_latest=build.kind != "personal")
            tree = repo.root / source.url.removeprefix(repo.base_url + "/")
            if build.kind == "personal":
                # The branch with the build's own packages over it, whatever their versions.
                if build_id not in personal_done:  # a retry keeps what the first publish wrote
                    assert _index(tree) == _files(pool, {**base, **{v[0]: v for v in build.variants}})
                    personal_done.add(build_id)
            else:
                published[build_id] = build.variants
            expected = _files(pool, newest(published))
            if published:
                assert _index(branch / "latest") == expected
                assert (branch / "latest" / STATE_FILE).is_file()
            else:
                assert not (branch / "latest").exists()  # personal builds never make a latest


def _serve(root: Path) -> Iterator[str]:
    with serving_repos(root) as server:
        yield f"http://127.0.0.1:{server.server_port}/"


@pytest.fixture
def served_repo(tmp_path: Path) -> Iterator[LocalAptRepository]:
    root = tmp_path / "repos"
    for url in _serve(root):
        yield LocalAptRepository(root, url)


def test_two_builds_of_different_packages_are_both_installable_from_latest(
    served_repo: LocalAptRepository, pool: Pool, tmp_path: Path
) -> None:
    alpha, beta = pool[("alpha", "1.0", 0)], pool[("beta", "1.0", 0)]
    served_repo.publish(_ref(1, "nightly"), alpha, move_latest=True)
    served_repo.publish(_ref(2, "nightly"), beta, move_latest=True)
    client = AptClient(tmp_path / "apt", served_repo.sources(PROJECT, BRANCH).line())
    client.update()
    for package in (*alpha, *beta):
        name = package.filename.split("_")[0]
        assert client.download(name).read_bytes() == package.path.read_bytes()
    # A new alpha without alpha-extra takes the old alpha's binaries away; beta stays.
    newer = pool[("alpha", "2.0", 0)]
    served_repo.publish(_ref(3, "nightly"), newer, move_latest=True)
    client.update()
    assert client.download("alpha").read_bytes() == newer[0].path.read_bytes()
    assert client.download("beta").read_bytes() == beta[0].path.read_bytes()
    with pytest.raises(Exception, match="alpha-extra"):
        client.download("alpha-extra")
    # Each build keeps its own view: the branch as that build left it.
    own = AptClient(tmp_path / "apt-1", served_repo.sources(PROJECT, BRANCH, build_id=1).line())
    own.update()
    with pytest.raises(Exception, match="beta"):
        own.download("beta")


def test_each_architectures_packages_reach_apt_for_that_architecture(
    served_repo: LocalAptRepository, tmp_path: Path
) -> None:
    """One source built for amd64 and arm64 (and its Architecture: all package): the branch
    holds all three, Release names the architectures, and apt with arm64 added as a foreign
    architecture downloads each architecture's own bytes."""
    debs = multiarch_debs(tmp_path / "debs", "multi", "1.0", ("amd64", "arm64"))
    served_repo.publish(_ref(1, "nightly"), debs, move_latest=True)
    release = (served_repo.root / PROJECT / BRANCH / "latest" / "Release").read_text()
    assert "Architectures: all amd64 arm64\n" in release
    client = AptClient(
        tmp_path / "apt", served_repo.sources(PROJECT, BRANCH).line(), architectures=("arm64",)
    )
    client.update()
    for wanted, deb in zip(("libmulti:amd64", "libmulti:arm64", "multi-doc"), debs, strict=True):
        assert client.download(wanted).read_bytes() == deb.path.read_bytes(), wanted


def test_retry_after_a_crash_between_publish_and_latest_is_not_lost(
    pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Build 1 is renamed into place, then its publisher dies before moving latest; build 2
    publishes on top of the old latest; build 1's retry must merge onto build 2's latest."""

    repo = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:9/")
    branch = repo.root / PROJECT / BRANCH
    real_switch: Callable[[Path, str], None] = apttree.switch_symlink

    def crash(_link: Path, _target: str) -> None:
        raise OSError("publisher killed")

    monkeypatch.setattr(apttree, "switch_symlink", crash)
    alpha = pool[("alpha", "1.0", 0)]
    with pytest.raises(OSError, match="killed"):
        repo.publish(_ref(1, "nightly"), alpha, move_latest=True)
    monkeypatch.setattr(apttree, "switch_symlink", real_switch)
    beta = pool[("beta", "1.0", 0)]
    repo.publish(_ref(2, "nightly"), beta, move_latest=True)
    assert _index(branch / "latest") == _files(pool, {"beta": ("beta", "1.0", 0)})
    repo.publish(_ref(1, "nightly"), alpha, move_latest=True)
    assert _index(branch / "latest") == _files(
        pool, {"alpha": ("alpha", "1.0", 0), "beta": ("beta", "1.0", 0)}
    )
    assert os.readlink(branch / "latest") == "builds/1"
    repo.publish(_ref(1, "nightly"), alpha, move_latest=True)  # once more: nothing changes
    assert os.readlink(branch / "latest") == "builds/1"


def test_branches_published_before_the_record_get_their_lost_packages_back(
    pool: Pool, tmp_path: Path
) -> None:
    """Before this change each tree held only its own build's packages and ``latest`` the last
    one's: the first publish after it merges every tree, so what earlier builds brought returns."""
    repo = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:9/")
    builds = repo.root / PROJECT / BRANCH / "builds"
    old = {1: ("gamma", "3.0", 0), 2: ("beta", "1.0", 1), 3: ("alpha", "1.0", 0), 4: ("beta", "1.9", 0)}
    for build_id, variant in old.items():  # as the farm wrote them: no record, own packages only
        tree = apttree.build_tree(builds, f".tmp-{build_id}-", pool[variant], f"{PROJECT}/{BRANCH}")
        tree.rename(builds / str(build_id))
    (builds.parent / "latest").symlink_to("builds/4")
    repo.publish(_ref(5, "nightly"), pool[("alpha", "2.0", 1)], move_latest=True)
    assert _index(builds.parent / "latest") == _files(
        pool, {"gamma": ("gamma", "3.0", 0), "beta": ("beta", "1.9", 0), "alpha": ("alpha", "2.0", 1)}
    )
