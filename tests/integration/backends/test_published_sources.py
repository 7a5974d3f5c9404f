"""Source packages are published with their binaries and carried forward with them (issue 12).

On both package repositories (the local flat trees and the session's real Pulp), judged by the
real apt: ``apt-get source`` through a private apt configured with the ``deb-src`` line the
farm prints.  A branch's ``latest`` serves the source package of every package it holds, not
only of the latest build's; a newer version replaces the older one's source package; a build's
own distribution keeps what the branch held at that build.  Source packages are real
``3.0 (quilt)`` ones made by ``dpkg-source -b`` (upstream tarball, debian tarball, .dsc).
On Pulp, a source package another project published under the same name and version with other
bytes is not served in place of the build's own (pulp_deb keeps one per name and version), and
build inputs go to Pulp's file repository of them, which retention keeps.
Cost: ~4 s locally; on Pulp ~20 s on an idle machine (five publishes, seven apt runs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pulp_glue.file.context import PulpFileContentContext, PulpFileRepositoryContext

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import AptSource, BuildRef, PackageFile, PackageRepository
from buildfarm.backends.pulp import PulpRepository
from buildfarm.backends.pulp.inputs import INPUTS_REPOSITORY
from buildfarm.backends.pulp.mirrors import CLASS_LABEL, MIRROR_CLASS
from buildfarm.local.aptclient import AptClient, AptError

from debpkgs import build_source_package
from httpkit import serving_repos
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests

BRANCH = "main"


@pytest.fixture
def local_repo(tmp_path: Path) -> Iterator[LocalAptRepository]:
    root = tmp_path / "repos"
    with serving_repos(root) as server:
        yield LocalAptRepository(root, f"http://127.0.0.1:{server.server_port}/")


def _apt_source(tmp_path: Path, source: AptSource, package: str, name: str) -> dict[str, bytes]:
    """``apt-get source --download-only package`` from ``source``'s deb-src line: name -> bytes."""
    line = source.source_line()
    assert line is not None, f"{source.line()} publishes no Sources index"
    client = AptClient(tmp_path / f"apt-{name}", line)
    client.update()
    return {path.name: path.read_bytes() for path in client.source(package)}


def _files(packages: list[PackageFile]) -> dict[str, bytes]:
    return {p.filename: p.path.read_bytes() for p in packages if not p.filename.endswith(".deb")}


def _carry_forward(repo: PackageRepository, project: str, tmp_path: Path) -> None:
    salt = f"{time.time_ns()}"  # Pulp is shared by the session: versions of this test alone
    alpha1 = build_source_package(tmp_path, "bf-alpha", f"1.0+{salt}-1")
    beta = build_source_package(tmp_path, "bf-beta", f"1.0+{salt}-1")
    alpha2 = build_source_package(tmp_path, "bf-alpha", f"2.0+{salt}-1")

    def ref(build_id: int) -> BuildRef:
        return BuildRef(build_id=build_id, project=project, branch=BRANCH, kind="nightly", user="alice")

    repo.publish(ref(1), alpha1, move_latest=True)
    second = repo.publish(ref(2), beta, move_latest=True)
    latest = repo.sources(project, BRANCH)
    # Build 2 brought beta only: alpha's source package was carried forward with its binary.
    assert _apt_source(tmp_path, latest, "bf-alpha", "a") == _files(alpha1)
    assert _apt_source(tmp_path, latest, "bf-beta", "b") == _files(beta)

    repo.publish(ref(3), alpha2, move_latest=True)
    latest = repo.sources(project, BRANCH)
    assert _apt_source(tmp_path, latest, "bf-alpha", "c") == _files(alpha2)
    assert _apt_source(tmp_path, latest, "bf-beta", "d") == _files(beta)
    # The replaced version's source package left latest with its binaries ...
    with pytest.raises(AptError):
        _apt_source(tmp_path, latest, f"bf-alpha=1.0+{salt}-1", "e")
    # ... and build 2's own distribution still serves the branch as it was then.
    assert _apt_source(tmp_path, second, "bf-alpha", "f") == _files(alpha1)


def test_local_latest_serves_every_packages_source(local_repo: LocalAptRepository, tmp_path: Path) -> None:
    _carry_forward(local_repo, "srclocal", tmp_path)


def test_pulp_latest_serves_every_packages_source(pulp_server: PulpServer, tmp_path: Path) -> None:
    repo = pulp_server.repository()
    _carry_forward(repo, f"srcpulp{time.time_ns()}", tmp_path)


def test_pulp_never_serves_another_projects_source_of_the_same_version(
    pulp_server: PulpServer, tmp_path: Path
) -> None:
    repo = pulp_server.repository()
    salt = time.time_ns()
    theirs = build_source_package(tmp_path / "theirs", "bf-gamma", f"1.0+{salt}-1", payload="theirs\n")
    ours = build_source_package(tmp_path / "ours", "bf-gamma", f"1.0+{salt}-1", payload="ours\n")
    repo.publish(BuildRef(1, f"srcx{salt}", BRANCH, "nightly", "alice"), theirs, move_latest=True)
    published = repo.publish(BuildRef(1, f"srcy{salt}", BRANCH, "nightly", "alice"), ours, move_latest=True)
    with pytest.raises(AptError):  # no source package rather than the other project's bytes
        _apt_source(tmp_path, published, "bf-gamma", "y")
    # A .dsc pulp_deb refuses (no Standards-Version: dpkg-source does not need one) does not
    # keep the build's binaries from being published.
    bare = build_source_package(tmp_path / "bare", "bf-bare", f"1.0+{salt}-1", standards_version=False)
    bare_source = repo.publish(BuildRef(2, f"srcy{salt}", BRANCH, "nightly", "alice"), bare, move_latest=True)
    client = AptClient(tmp_path / "apt-bare", bare_source.line())
    client.update()
    deb = next(p for p in bare if p.filename.endswith(".deb"))
    assert client.download("bf-bare").read_bytes() == deb.path.read_bytes()


def test_pulp_keeps_build_inputs_in_a_file_repository_retention_keeps(
    pulp_server: PulpServer, tmp_path: Path
) -> None:
    repo: PulpRepository = pulp_server.repository(orphan_protection_minutes=0)
    files = build_source_package(tmp_path, "bf-delta", f"1.0+{time.time_ns()}-1")
    inputs = [f for f in files if f.filename.endswith((".dsc", ".orig.tar.gz"))]
    assert repo.keep_build_inputs(inputs) == 2
    assert pulp_server.repository().keep_build_inputs(inputs) == 0  # another node: found, not sent
    repo.collect_garbage()  # what retention runs: nothing the repository holds is an orphan
    record = PulpFileRepositoryContext(repo.ctx).show(repo.inputs.repository())
    assert record["name"] == INPUTS_REPOSITORY
    assert record["pulp_labels"][CLASS_LABEL] == MIRROR_CLASS
    held = {
        entity["relative_path"]: entity["sha256"]
        for entity in PulpFileContentContext(repo.ctx).list_iterator(
            parameters={"repository_version": record["latest_version_href"]}
        )
    }
    for file in inputs:
        assert held[f"{file.sha256}/{file.filename}"] == file.sha256
