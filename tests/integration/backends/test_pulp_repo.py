"""PulpRepository against a real Pulp (pulpcore + pulp_deb), judged by the real apt.

The packages are real .debs made by ``dpkg-deb``; Pulp publishes them; ``apt-get update`` and
``apt-get download`` with a private configuration must get byte-identical files.  The server
is shared by the whole session (pulpkit), so every test works in a project of its own.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pulp_glue.common.context import PulpEntityContext
from pulp_glue.core.context import PulpArtifactContext, PulpTaskContext

from buildfarm.backends.base import AptSource, BuildRef, PackageFile, PackageRepository
from buildfarm.backends.pulp import PulpDebPackageContext, PulpRepository
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import NotFoundError, PermanentError, ServiceUnavailableError

from debpkgs import build_deb, fetch_from
from helpers import free_port
from pulpkit import PulpServer, pulp_server

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests

BRANCH = "main"
DebFactory = Callable[[str, str], PackageFile]


def _host_architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PackageFile]:
    """bf-hello 1.0 and 2.0 (Architecture: all) and bf-world 1.0 (the host's architecture)."""
    workdir = tmp_path_factory.mktemp("pulp-debs")
    return {
        "hello1": build_deb(workdir, "bf-hello", "1.0", architecture="all"),
        "hello2": build_deb(workdir, "bf-hello", "2.0", architecture="all"),
        "world1": build_deb(workdir, "bf-world", "1.0", architecture=_host_architecture()),
    }


@pytest.fixture
def make_deb(tmp_path: Path) -> DebFactory:
    """Fresh packages whose bytes no other test made (so Pulp has never seen them)."""
    salt = f"{time.time_ns()}"
    return lambda name, version: build_deb(tmp_path, name, f"{version}+{salt}")


@pytest.fixture(scope="module")
def repo(pulp_server: PulpServer) -> PulpRepository:
    return pulp_server.repository()


@pytest.fixture
def apt(tmp_path: Path) -> Callable[[AptSource], AptClient]:
    """``apt-get update`` of a new private apt client for one source.

    A new client every time, as a builder's fresh chroot has: a client that keeps its lists
    sends If-Modified-Since, and Pulp answers 304 for a Release replaced within about a second
    (its Last-Modified has one-second steps), which would test apt's cache instead of Pulp.
    """
    made: list[AptClient] = []

    def update(source: AptSource) -> AptClient:
        made.append(AptClient(tmp_path / f"apt-{len(made)}", source.line()))
        made[-1].update()
        return made[-1]

    return update


def ref(
    project: str, build_id: int, kind: str = "nightly", user: str = "alice", branch: str = BRANCH
) -> BuildRef:
    return BuildRef(build_id=build_id, project=project, branch=branch, kind=kind, user=user)


def _bytes(client: AptClient, package: str) -> bytes:
    return client.download(package).read_bytes()


def _count(context: PulpEntityContext, **parameters: str) -> int:
    """How many entities Pulp holds that match ``parameters`` (one request, first page only)."""
    stats: dict[str, int] = {}
    next(context.list_iterator(parameters=parameters, batch_size=1, stats=stats), None)
    return stats["count"]


def test_is_a_package_repository(repo: PulpRepository) -> None:
    as_protocol: PackageRepository = repo
    assert as_protocol is repo


def test_publish_stage_and_latest(
    repo: PulpRepository, debs: dict[str, PackageFile], apt: Callable[[AptSource], AptClient]
) -> None:
    origin = repo.content_origin
    with pytest.raises(NotFoundError, match=r"^no successful build of examples/main has been published yet$"):
        repo.sources("examples", BRANCH)

    published = repo.publish(ref("examples", 1), [debs["hello1"], debs["world1"]], move_latest=True)
    assert published.line() == f"deb [trusted=yes] {origin}/pulp/content/examples/main/1/ buildfarm main"
    latest = repo.sources("examples", BRANCH)
    assert latest.line() == f"deb [trusted=yes] {origin}/pulp/content/examples/main/latest/ buildfarm main"
    assert repo.sources("examples", BRANCH, build_id=1) == published
    client = apt(latest)
    assert _bytes(client, "bf-hello") == debs["hello1"].path.read_bytes()
    assert _bytes(client, "bf-world") == debs["world1"].path.read_bytes()

    # While build 2 runs, its staging serves the branch's packages plus what it built so far.
    staging = repo.stage(ref("examples", 2), [debs["hello2"]], fetch_from(debs.values()))
    assert staging.url == f"{origin}/pulp/content/examples/main/staging/2/"
    during = apt(staging)
    assert _bytes(during, "bf-hello") == debs["hello2"].path.read_bytes()
    assert _bytes(during, "bf-world") == debs["world1"].path.read_bytes()

    # Build 2 fails: it gets its own distribution (the branch's set with its bf-hello) ...
    failed = repo.publish(ref("examples", 2), [debs["hello2"]], move_latest=False)
    repo.drop_staging(ref("examples", 2))
    own = apt(failed)
    assert _bytes(own, "bf-hello") == debs["hello2"].path.read_bytes()
    assert _bytes(own, "bf-world") == debs["world1"].path.read_bytes()
    # ... everyone's latest keeps serving build 1, and the staging is gone.
    assert _bytes(apt(latest), "bf-hello") == debs["hello1"].path.read_bytes()
    with pytest.raises(AptError):
        apt(staging)

    # Build 3 succeeds with only bf-hello rebuilt: latest gets it and keeps bf-world.
    repo.publish(ref("examples", 3), [debs["hello2"]], move_latest=True)
    client = apt(latest)
    assert _bytes(client, "bf-hello") == debs["hello2"].path.read_bytes()
    assert _bytes(client, "bf-world") == debs["world1"].path.read_bytes()


def test_staging_holds_exactly_the_list_and_goes_away(
    repo: PulpRepository, debs: dict[str, PackageFile], apt: Callable[[AptSource], AptClient]
) -> None:
    build = ref("staging-only", 7)
    first = repo.stage(build, [debs["hello1"], debs["world1"]], fetch_from(debs.values()))
    assert _bytes(apt(first), "bf-world") == debs["world1"].path.read_bytes()

    second = repo.stage(build, [debs["hello2"]], fetch_from(debs.values()))
    assert second == first
    client = apt(second)
    assert _bytes(client, "bf-hello") == debs["hello2"].path.read_bytes()
    with pytest.raises(AptError, match="bf-world"):
        client.download("bf-world")
    with pytest.raises(NotFoundError):
        repo.sources("staging-only", BRANCH)  # staging never publishes

    repo.drop_staging(build)
    with pytest.raises(AptError):
        apt(second)
    repo.drop_staging(build)  # dropping twice is harmless


def test_staging_fetches_only_what_its_latest_version_lacks(
    repo: PulpRepository, make_deb: DebFactory, apt: Callable[[AptSource], AptClient]
) -> None:
    """Each release stages every package built so far; the staging repository's latest version
    holds the earlier ones, so only the new one is fetched (was every one, every time)."""
    made = [make_deb(f"bf-inc{index}", "1.0") for index in range(3)]
    fetched: list[str] = []
    serve = fetch_from(made)

    def fetch(sha256: str, dest: Path) -> None:
        fetched.append(sha256)
        serve(sha256, dest)

    build = ref("incremental", 5)
    uploads = repo.uploads
    for upto in (1, 2, 3):
        source = repo.stage(build, made[:upto], fetch)
    assert fetched == [p.sha256 for p in made]  # was 1 + 2 + 3 fetches
    assert repo.uploads - uploads == 3
    client = apt(source)
    for package in made:
        assert _bytes(client, package.path.name.split("_")[0]) == package.path.read_bytes()
    # Still exactly the list: a package left out goes, and nothing is fetched for that.
    source = repo.stage(build, made[1:], fetch)
    with pytest.raises(AptError, match="bf-inc0"):
        apt(source).download("bf-inc0")
    assert len(fetched) == 3
    repo.drop_staging(build)


def test_personal_build_never_touches_latest(
    repo: PulpRepository, debs: dict[str, PackageFile], apt: Callable[[AptSource], AptClient]
) -> None:
    repo.publish(ref("personal-proj", 1), [debs["hello1"], debs["world1"]], move_latest=True)
    source = repo.publish(ref("personal-proj", 4, kind="personal", user="alice"), [debs["hello2"]], True)
    assert source.url == f"{repo.content_origin}/pulp/content/personal-proj/_personal/alice/4/"
    assert repo.sources("personal-proj", BRANCH, build_id=4) == source
    mine = apt(source)
    assert _bytes(mine, "bf-hello") == debs["hello2"].path.read_bytes()
    assert _bytes(mine, "bf-world") == debs["world1"].path.read_bytes()  # the branch's, not rebuilt
    everyone = apt(repo.sources("personal-proj", BRANCH))
    assert _bytes(everyone, "bf-hello") == debs["hello1"].path.read_bytes()

    # A branch called "personal" and a user called "latest" cannot collide with anything.
    repo.publish(ref("personal-proj", 5, branch="personal"), [debs["hello1"]], move_latest=True)
    repo.publish(ref("personal-proj", 6, kind="personal", user="latest"), [debs["hello2"]], move_latest=False)
    assert repo.sources("personal-proj", "personal").url.endswith("/personal-proj/personal/latest/")
    assert repo.sources("personal-proj", "personal", build_id=6).url.endswith(
        "/personal-proj/_personal/latest/6/"
    )


def test_double_publish_keeps_the_first_and_late_retry_keeps_newer_latest(
    repo: PulpRepository, debs: dict[str, PackageFile], apt: Callable[[AptSource], AptClient]
) -> None:
    first = repo.publish(ref("twice", 8), [debs["hello1"], debs["hello1"]], move_latest=True)
    again = repo.publish(ref("twice", 8), [debs["hello2"], debs["world1"]], move_latest=True)
    assert again == first
    client = apt(first)
    assert _bytes(client, "bf-hello") == debs["hello1"].path.read_bytes()
    with pytest.raises(AptError, match="bf-world"):
        client.download("bf-world")

    repo.publish(ref("twice", 11), [debs["hello2"]], move_latest=True)
    repo.publish(ref("twice", 10), [debs["hello1"]], move_latest=True)  # retried late: older than 11
    latest = apt(repo.sources("twice", BRANCH))
    assert _bytes(latest, "bf-hello") == debs["hello2"].path.read_bytes()


def test_known_packages_are_added_by_reference(
    repo: PulpRepository, pulp_server: PulpServer, make_deb: DebFactory, apt: Callable[[AptSource], AptClient]
) -> None:
    package = make_deb("bf-shared", "1.0")
    repo.publish(ref("dedupe", 1, branch="main"), [package], move_latest=True)
    assert _count(PulpArtifactContext(repo.ctx), sha256=package.sha256) == 1

    # Another branch, through a new client object (nothing cached): Pulp's sha256 index decides.
    other = PulpRepository(
        pulp_server.base_url, pulp_server.username, pulp_server.password, repo.content_origin
    )
    source = other.publish(ref("dedupe", 2, branch="r/2.0"), [package], move_latest=True)
    assert source.url.endswith("/pulp/content/dedupe/r_2f2.0/2/")
    assert (other.uploads, other.reused) == (0, 1)
    # None of the tasks Pulp ran for that client created a package, and it holds one artifact.
    tasks = list(PulpTaskContext(repo.ctx).list_iterator(parameters={"logging_cid": other.correlation_id}))
    assert tasks, "the publish ran no Pulp task at all?"
    assert [h for task in tasks for h in task["created_resources"] if "/content/deb/packages/" in h] == []
    assert _count(PulpArtifactContext(repo.ctx), sha256=package.sha256) == 1
    assert _count(PulpDebPackageContext(repo.ctx), sha256=package.sha256) == 1
    assert _bytes(apt(other.sources("dedupe", "r/2.0")), "bf-shared") == package.path.read_bytes()


def test_concurrent_publishes_of_one_branch_lose_nothing(
    repo: PulpRepository, make_deb: DebFactory, apt: Callable[[AptSource], AptClient]
) -> None:
    packages = {build_id: make_deb(f"bf-c{build_id}", "1.0") for build_id in range(20, 24)}
    errors: list[BaseException] = []
    start = threading.Barrier(len(packages))

    def publish(build_id: int) -> None:
        try:
            start.wait()
            repo.publish(ref("concurrent", build_id), [packages[build_id]], move_latest=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(build_id,)) for build_id in packages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    client = apt(repo.sources("concurrent", BRANCH))
    for build_id, package in packages.items():
        assert _bytes(client, f"bf-c{build_id}") == package.path.read_bytes()


def test_bad_packages_and_names_are_refused(
    repo: PulpRepository, debs: dict[str, PackageFile], tmp_path: Path
) -> None:
    hello = debs["hello1"]
    with pytest.raises(PermanentError, match="does not match its record"):
        repo.publish(
            ref("refused", 30), [PackageFile(hello.filename, "0" * 64, hello.size, hello.path)], True
        )
    junk = tmp_path / "junk_1.0_all.deb"
    junk.write_bytes(b"not a deb")
    record = PackageFile(junk.name, hashlib.sha256(b"not a deb").hexdigest(), 9, junk)
    with pytest.raises(PermanentError, match=r"uploading junk_1\.0_all\.deb"):
        repo.publish(ref("refused", 30), [hello, record], move_latest=True)
    with pytest.raises(PermanentError, match="invalid package file name 'Release'"):
        repo.publish(ref("refused", 30), [PackageFile("Release", hello.sha256, hello.size, hello.path)], True)
    with pytest.raises(NotFoundError):
        repo.sources("refused", BRANCH, build_id=30)
    for project, branch in [("..", "main"), ("examples", "../main"), ("a/b", "main")]:
        with pytest.raises(PermanentError, match="invalid"):
            repo.sources(project, branch)


def test_unreachable_pulp_is_a_temporary_error(pulp_server: PulpServer) -> None:
    nowhere = PulpRepository(f"http://127.0.0.1:{free_port()}", "admin", "x", pulp_server.content_origin)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"^Pulp at http://127\.0\.0\.1:\d+ is unreachable"):
        nowhere.sources("examples", BRANCH)
    assert time.monotonic() - started < 5


def test_pulp_that_never_answers_is_a_temporary_error_within_the_timeout(pulp_server: PulpServer) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        stuck = PulpRepository(
            f"http://127.0.0.1:{port}", "admin", "x", pulp_server.content_origin, http_timeout_seconds=1
        )
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError, match=r"is unreachable .*timed out"):
            stuck.sources("examples", BRANCH)
        assert time.monotonic() - started < 5


def test_wrong_password_is_a_permanent_error(pulp_server: PulpServer) -> None:
    wrong = PulpRepository(pulp_server.base_url, pulp_server.username, "wrong", pulp_server.content_origin)
    with pytest.raises(PermanentError, match="rejected the credentials of user 'admin'"):
        wrong.check()
