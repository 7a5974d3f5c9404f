"""LocalAptRepository judged by the real apt: what apt downloads must be byte-identical to what we built.

Real tools only: the packages are made by ``dpkg-deb``, the indexes by ``apt-ftparchive``, served by
our HTTP server and read by ``apt-get update`` / ``apt-get download`` with a private configuration.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import buildfarm
from buildfarm.backends import apttree
from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import BuildRef, PackageFile, PackageRepository
from buildfarm.local.aptclient import AptClient, AptError
from buildfarm.model.errors import NotFoundError, PermanentError

from debpkgs import build_deb, fetch_from
from helpers import wait_until
from httpkit import serving_repos

pytestmark = pytest.mark.integration

PROJECT = "examples"
BRANCH = "main"


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PackageFile]:
    """Real .deb files: two versions of bf-hello (different bytes) and bf-world."""
    workdir = tmp_path_factory.mktemp("debs")
    return {
        "hello1": build_deb(workdir, "bf-hello", "1.0", payload="hello from build one\n"),
        "hello2": build_deb(workdir, "bf-hello", "2.0", payload="hello from build two\n"),
        "world1": build_deb(workdir, "bf-world", "1.0", payload="world\n"),
    }


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[LocalAptRepository]:
    """A repository under tmp_path, served on a free port of 127.0.0.1 for the test's duration."""
    root = tmp_path / "repos"
    with serving_repos(root) as server:
        yield LocalAptRepository(root, f"http://127.0.0.1:{server.server_port}/")


@pytest.fixture
def apt(tmp_path: Path) -> Callable[[str], AptClient]:
    """Make private apt clients (each its own lists and cache) for a sources line."""
    made: list[AptClient] = []

    def make(source_line: str) -> AptClient:
        made.append(AptClient(tmp_path / f"apt-{len(made)}", source_line))
        return made[-1]

    return make


def ref(build_id: int, kind: str = "nightly", user: str = "alice", branch: str = BRANCH) -> BuildRef:
    return BuildRef(build_id=build_id, project=PROJECT, branch=branch, kind=kind, user=user)


def branch_dir(repo: LocalAptRepository) -> Path:
    return repo.root / PROJECT / BRANCH


def test_is_a_package_repository(repo: LocalAptRepository) -> None:
    as_protocol: PackageRepository = repo
    assert as_protocol is repo


def test_latest_moves_only_when_asked(
    repo: LocalAptRepository, debs: dict[str, PackageFile], apt: Callable[[str], AptClient]
) -> None:
    with pytest.raises(NotFoundError, match=r"^no successful build of examples/main has been published yet$"):
        repo.sources(PROJECT, BRANCH)

    published = repo.publish(ref(1), [debs["hello1"], debs["world1"]], move_latest=True)
    assert published.line() == f"deb [trusted=yes] {repo.base_url}/examples/main/builds/1 ./"
    latest = repo.sources(PROJECT, BRANCH)
    assert latest.line() == f"deb [trusted=yes] {repo.base_url}/examples/main/latest ./"

    client = apt(latest.line())
    client.update()
    assert client.download("bf-hello").read_bytes() == debs["hello1"].path.read_bytes()
    assert client.download("bf-world").read_bytes() == debs["world1"].path.read_bytes()

    # A build that does not move latest publishes its own distribution (the branch with its
    # packages merged in) but everyone's latest keeps build 1's bytes.
    unmoved = repo.publish(ref(2), [debs["hello2"]], move_latest=False)
    client.update()
    assert client.download("bf-hello").read_bytes() == debs["hello1"].path.read_bytes()
    assert repo.sources(PROJECT, BRANCH, build_id=2) == unmoved
    own = apt(unmoved.line())
    own.update()
    assert own.download("bf-hello").read_bytes() == debs["hello2"].path.read_bytes()
    assert own.download("bf-world").read_bytes() == debs["world1"].path.read_bytes()

    repo.publish(ref(3), [debs["hello2"], debs["world1"]], move_latest=True)
    client.update()
    assert client.download("bf-hello").read_bytes() == debs["hello2"].path.read_bytes()
    assert os.readlink(branch_dir(repo) / "latest") == "builds/3"


def test_personal_build_never_touches_latest(
    repo: LocalAptRepository, debs: dict[str, PackageFile], apt: Callable[[str], AptClient]
) -> None:
    source = repo.publish(ref(4, kind="personal", user="alice"), [debs["hello2"]], move_latest=True)
    assert source.url == f"{repo.base_url}/examples/_personal/alice/4"
    assert (repo.root / "examples" / "_personal" / "alice" / "4" / "Release").is_file()
    with pytest.raises(NotFoundError, match="no successful build of examples/main"):
        repo.sources(PROJECT, BRANCH)
    assert not (branch_dir(repo) / "latest").exists()
    assert repo.sources(PROJECT, BRANCH, build_id=4) == source
    client = apt(source.line())
    client.update()
    assert client.download("bf-hello").read_bytes() == debs["hello2"].path.read_bytes()


def test_branch_named_personal_does_not_collide(
    repo: LocalAptRepository, debs: dict[str, PackageFile]
) -> None:
    repo.publish(ref(5, branch="personal"), [debs["hello1"]], move_latest=True)
    repo.publish(ref(6, kind="personal", user="latest"), [debs["hello2"]], move_latest=False)
    assert repo.sources(PROJECT, "personal").url.endswith("/examples/personal/latest")
    assert os.readlink(repo.root / "examples" / "personal" / "latest") == "builds/5"
    assert repo.sources(PROJECT, "personal", build_id=6).url.endswith("/examples/_personal/latest/6")


def test_staging_is_replaced_whole(
    repo: LocalAptRepository, debs: dict[str, PackageFile], apt: Callable[[str], AptClient]
) -> None:
    build = ref(7)
    first = repo.stage(build, [debs["hello1"], debs["world1"]], fetch_from(debs.values()))
    assert first.url == f"{repo.base_url}/examples/main/staging/7"
    client = apt(first.line())
    client.update()
    assert client.download("bf-world").read_bytes() == debs["world1"].path.read_bytes()

    second = repo.stage(build, [debs["hello2"]], fetch_from(debs.values()))
    assert second == first
    client.update()
    assert client.download("bf-hello").read_bytes() == debs["hello2"].path.read_bytes()
    with pytest.raises(AptError, match="bf-world"):
        client.download("bf-world")  # the staging repo holds exactly the new list
    staging = branch_dir(repo) / "staging"
    assert [p.name for p in staging.glob(".7-gen-*")] == [os.readlink(staging / "7")]  # the old one went
    assert not (branch_dir(repo) / "latest").exists()  # staging never publishes

    repo.drop_staging(build)
    assert list(staging.iterdir()) == []
    with pytest.raises(AptError):
        client.update()
    repo.drop_staging(build)  # dropping twice is harmless


def test_staging_fetches_and_indexes_only_what_a_release_adds(
    repo: LocalAptRepository,
    debs: dict[str, PackageFile],
    apt: Callable[[str], AptClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched: list[str] = []
    indexed: list[tuple[str, int]] = []  # each apt-ftparchive run: its command and the .deb files it saw
    serve = fetch_from(debs.values())
    run_ftparchive = apttree.run_ftparchive

    def fetch(sha256: str, dest: Path) -> None:
        fetched.append(sha256)
        serve(sha256, dest)

    def counted(args: list[str], cwd: Path) -> bytes:
        indexed.append((args[-2], len(list(cwd.rglob("*.deb")))))
        return run_ftparchive(args, cwd)

    monkeypatch.setattr(apttree, "run_ftparchive", counted)
    build = ref(12)
    hello, world = debs["hello1"], debs["world1"]
    source = repo.stage(build, [hello], fetch)
    repo.stage(build, [world, hello], fetch)
    assert fetched == [hello.sha256, world.sha256]  # each package once
    assert indexed == [("packages", 1), ("release", 0)] * 2  # the second indexed bf-world alone
    repo.stage(build, [hello, world, hello], fetch)
    assert len(fetched) == 2 and len(indexed) == 4  # nothing new: nothing written
    client = apt(source.line())
    client.update()
    assert client.download("bf-hello").read_bytes() == hello.path.read_bytes()
    assert client.download("bf-world").read_bytes() == world.path.read_bytes()
    release = (branch_dir(repo) / "staging" / "12" / "Release").read_text()
    packages = (branch_dir(repo) / "staging" / "12" / "Packages").read_bytes()
    assert hashlib.sha256(packages).hexdigest() in release  # Release describes this Packages


def test_double_publish_keeps_the_first(repo: LocalAptRepository, debs: dict[str, PackageFile]) -> None:
    first = repo.publish(ref(8), [debs["hello1"], debs["hello1"]], move_latest=True)
    build = branch_dir(repo) / "builds" / "8"
    release = build / "Release"
    before = (release.stat().st_ino, release.read_bytes(), sorted(p.name for p in build.iterdir()))
    again = repo.publish(ref(8), [debs["hello1"], debs["world1"]], move_latest=True)
    assert again == first
    assert (release.stat().st_ino, release.read_bytes(), sorted(p.name for p in build.iterdir())) == before
    assert (build / "Packages").read_text().count("Package: bf-hello\n") == 1
    assert "bf-world" not in (build / "Packages").read_text()
    assert [p.name for p in (branch_dir(repo) / "builds").iterdir()] == ["8"]  # no temp dirs left


def test_late_retry_of_older_build_keeps_newer_latest(
    repo: LocalAptRepository, debs: dict[str, PackageFile]
) -> None:
    repo.publish(ref(10), [debs["hello1"]], move_latest=True)
    repo.publish(ref(11), [debs["hello2"]], move_latest=True)
    repo.publish(ref(10), [debs["hello1"]], move_latest=True)
    assert os.readlink(branch_dir(repo) / "latest") == "builds/11"


def test_concurrent_publishes_of_one_branch_serialize(
    repo: LocalAptRepository, debs: dict[str, PackageFile]
) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def publish(build_id: int) -> None:
        try:
            start.wait()
            repo.publish(ref(build_id), [debs["hello1"], debs["world1"]], move_latest=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(20, 24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # latest is the last one published (they hold the same packages); each tree is complete.
    assert os.readlink(branch_dir(repo) / "latest") in {f"builds/{i}" for i in range(20, 24)}
    for build_id in range(20, 24):
        packages = (branch_dir(repo) / "builds" / str(build_id) / "Packages").read_text()
        assert packages.count("Package: ") == 2


def test_package_not_matching_its_record_is_not_published(
    repo: LocalAptRepository, debs: dict[str, PackageFile], tmp_path: Path
) -> None:
    hello = debs["hello1"]
    wrong = PackageFile(hello.filename, "0" * 64, hello.size, hello.path)
    with pytest.raises(PermanentError, match="does not match its record"):
        repo.publish(ref(30), [wrong], move_latest=True)
    junk = tmp_path / "junk_1.0_all.deb"
    junk.write_bytes(b"not a deb")
    record = PackageFile(junk.name, hashlib.sha256(b"not a deb").hexdigest(), 9, junk)
    with pytest.raises(PermanentError, match=r"could not index junk_1\.0_all\.deb"):
        repo.publish(ref(30), [hello, record], move_latest=True)
    release = PackageFile("Release", hello.sha256, hello.size, hello.path)
    with pytest.raises(PermanentError, match="invalid package file name 'Release'"):
        repo.publish(ref(30), [release], move_latest=True)
    assert not list((branch_dir(repo) / "builds").glob("*"))  # nothing, not even a temp tree
    assert not (branch_dir(repo) / "latest").exists()


def test_missing_apt_ftparchive_names_the_package(
    repo: LocalAptRepository, debs: dict[str, PackageFile], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PermanentError, match=r"install the Debian package (apt-utils|dpkg)"):
        repo.publish(ref(31), [debs["hello1"]], move_latest=True)


@pytest.mark.parametrize(("project", "branch"), [("..", "main"), ("examples", "../main"), ("a/b", "main")])
def test_bad_names_rejected(repo: LocalAptRepository, project: str, branch: str) -> None:
    with pytest.raises(PermanentError, match="invalid"):
        repo.sources(project, branch)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_server_stays_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "builds" / "1").mkdir(parents=True)
    (root / "builds" / "1" / "Release").write_text("inside\n")
    (root / "latest").symlink_to("builds/1")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside\n")
    (root / "escape").symlink_to(secret)
    (root / "escape-dir").symlink_to(tmp_path)
    with serving_repos(root) as server:
        port = server.server_port
        assert _get(port, "/latest/Release") == (200, b"inside\n")
        # Ignoring If-Modified-Since: a same-second republish must never be answered 304.
        status, _ = _get(port, "/latest/Release", {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
        assert status == 200
        assert _get(port, "/escape")[0] == 404
        assert _get(port, "/escape-dir/secret.txt")[0] == 404
        assert _get(port, "/../secret.txt")[0] == 404


def test_httpserve_module_entry_point(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hi\n")
    port_file = tmp_path / "port"
    access_log = tmp_path / "access.log"
    env = {**os.environ, "PYTHONPATH": str(Path(buildfarm.__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buildfarm.backends.httpserve",
            "--root",
            str(root),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--access-log",
            str(access_log),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: port_file.exists() or proc.poll() is not None, 10, "httpserve to write its port")
        assert proc.poll() is None, proc.communicate()
        assert _get(int(port_file.read_text()), "/hello.txt") == (200, b"hi\n")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err == b""  # quiet: requests go to the access log, not stderr
    assert "GET /hello.txt" in access_log.read_text()
