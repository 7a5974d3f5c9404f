"""3rd-party mirrors through a real Pulp, judged by the real apt.

The "3rd party" is a small APT repository (``dists/<suite>/main/binary-<arch>`` indexed by
Debian's apt-ftparchive, real .debs from dpkg-deb) served over HTTP on 127.0.0.1 by a thread.
The session's Pulp (pulpkit) syncs it; ``apt-get update`` + ``apt-get download`` through the
mirror's distribution must give byte-identical packages; a re-sync after upstream changed
serves the new set while no reader ever sees a half-switched one; the CLI syncs through the API.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from debian.deb822 import Release

from buildfarm.backends.aptrepo import LocalAptRepository
from buildfarm.backends.base import PackageFile
from buildfarm.backends.pulp import PulpAptRepositoryContext, PulpRepository
from buildfarm.engine.context import FarmContext
from buildfarm.engine.submit import submit_build
from buildfarm.engine.wiring import make_repository
from buildfarm.local.aptclient import AptClient
from buildfarm.model.errors import PermanentError, ServiceUnavailableError
from buildfarm.model.manifest import load_manifest
from buildfarm.model.settings import MirrorConfig
from buildfarm.runners.base import StepJob, StepResult
from buildfarm.runners.host import HostRunner

from apikit import running_api
from debpkgs import build_deb, make_package, write_manifest
from farmkit import drain, make_test_context
from helpers import free_port
from pulpkit import PulpServer, pulp_server
from test_local_farm import BUILDFARM

pytestmark = pytest.mark.integration
__all__ = ["pulp_server"]  # the fixture, imported for this module's tests

SUITE = "tpsuite"
COMPONENT = "main"


def _host_architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


ARCH = _host_architecture()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@dataclass
class Upstream:
    """A 3rd-party APT repository on localhost: ``root`` served at ``url``."""

    root: Path
    url: str
    debs: dict[str, PackageFile]

    def add(self, deb: PackageFile) -> None:
        """Add a package and rewrite the indexes (Packages first, then Release, as archives do)."""
        pool = self.root / "pool" / COMPONENT
        shutil.copyfile(deb.path, pool / deb.filename)
        self.debs[deb.filename] = deb
        self._index()

    def _index(self) -> None:
        def ftparchive(*args: str) -> bytes:
            return subprocess.run(
                ["apt-ftparchive", *args], cwd=self.root, check=True, capture_output=True
            ).stdout

        dist = self.root / "dists" / SUITE
        binary = dist / COMPONENT / f"binary-{ARCH}"
        binary.mkdir(parents=True, exist_ok=True)
        packages = ftparchive("packages", f"pool/{COMPONENT}")
        (binary / "Packages").write_bytes(packages)
        (binary / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
        options = {"Suite": SUITE, "Codename": SUITE, "Components": COMPONENT, "Architectures": ARCH}
        args = [x for k, v in options.items() for x in ("-o", f"APT::FTPArchive::Release::{k}={v}")]
        release = ftparchive(*args, "release", f"dists/{SUITE}")
        (dist / "Release").write_bytes(release)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    root = tmp_path_factory.mktemp("third-party")
    debs_dir = tmp_path_factory.mktemp("third-party-debs")
    (root / "pool" / COMPONENT).mkdir(parents=True)
    salt = str(time.time_ns())  # bytes no other test module gave Pulp
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    repo = Upstream(root, f"http://127.0.0.1:{server.server_address[1]}/debian", {})
    # served at /debian/: a mirror URL is rarely the server's root
    (root / "debian").symlink_to(".")
    for name, arch in (("tp-alpha", "all"), ("tp-beta", ARCH)):
        repo.add(build_deb(debs_dir, name, f"1.0+{salt}", architecture=arch))
    try:
        yield repo
    finally:
        server.shutdown()
        server.server_close()


def _mirror(upstream: Upstream, name: str = "thirdparty") -> MirrorConfig:
    return MirrorConfig(
        name=name, url=upstream.url, distribution=SUITE, components=[COMPONENT], architectures=[ARCH]
    )


@pytest.fixture(scope="module")
def repo(pulp_server: PulpServer, upstream: Upstream) -> PulpRepository:
    return PulpRepository(
        pulp_server.base_url,
        pulp_server.username,
        pulp_server.password,
        pulp_server.content_origin,
        task_timeout_seconds=60,
        mirrors=[_mirror(upstream)],
    )


def _apt(workdir: Path, line: str) -> AptClient:
    client = AptClient(workdir, line)
    client.update()
    return client


def _served(url: str) -> tuple[bytes, set[str]]:
    """What the distribution serves now: Release, and the packages of the Packages indexes it
    vouches for (fetches Release, the indexes, Release again; looks again if it switched)."""
    with httpx.Client(timeout=10) as http:
        for _ in range(5):
            release = http.get(f"{url}dists/{SUITE}/Release").content
            listed = {e["name"]: e["sha256"] for e in Release(release)["SHA256"]}
            indexes = {
                n: http.get(f"{url}dists/{SUITE}/{n}").content for n in listed if n.endswith("/Packages")
            }
            if http.get(f"{url}dists/{SUITE}/Release").content != release:
                continue  # the distribution switched between our requests: look again
            names: set[str] = set()
            for name, data in indexes.items():
                assert listed[name] == hashlib.sha256(data).hexdigest(), f"Release and {name} disagree"
                names |= {line[9:].decode() for line in data.splitlines() if line.startswith(b"Package: ")}
            return release, names
    raise AssertionError("the distribution kept switching")


def test_sync_serves_upstream_bytes_to_apt(repo: PulpRepository, upstream: Upstream, tmp_path: Path) -> None:
    mirror = _mirror(upstream)
    assert repo.mirror_sources() == []  # configured, not synced: builds do not use it yet
    status = repo.sync_mirror(mirror)
    print(f"\nmirror sync of {status.packages} packages: {status.seconds:.2f} s")
    line = f"deb [trusted=yes] {repo.content_origin}/pulp/content/_mirrors/thirdparty/ {SUITE} {COMPONENT}"
    assert (status.name, status.source, status.packages) == ("thirdparty", line, 2)
    assert [s.line() for s in repo.mirror_sources()] == [line]
    client = _apt(tmp_path / "apt", line)
    for deb in upstream.debs.values():
        name = deb.filename.split("_", 1)[0]
        assert client.download(name).read_bytes() == deb.path.read_bytes()
    # Recognisably a mirror for retention: labelled class mirror.
    found = next(
        PulpAptRepositoryContext(repo.ctx).list_iterator(parameters={"name": "buildfarm/_mirrors/thirdparty"})
    )
    assert found["pulp_labels"] == {"buildfarm.class": "mirror", "buildfarm.mirror": "thirdparty"}


def test_resync_moves_the_distribution_atomically(
    repo: PulpRepository, upstream: Upstream, tmp_path: Path
) -> None:
    mirror = _mirror(upstream)
    first = repo.sync_mirror(mirror)  # the state of the previous test, or the first sync
    again = repo.sync_mirror(mirror)
    print(f"\nmirror re-sync with no change: {again.seconds:.2f} s")
    assert again.version == first.version  # nothing changed upstream: no new repository version
    url = repo.mirror_sources()[0].url
    old_release, old = _served(url)

    upstream.add(build_deb(tmp_path, "tp-gamma", f"1.0+{time.time_ns()}", architecture="all"))
    seen: list[set[str]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(_served(url)[1])

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status = repo.sync_mirror(mirror)
    finally:
        done.set()
        watcher.join(30)
    new = old | {"tp-gamma"}
    assert status.packages == 3 and int(status.version) == int(first.version) + 1
    assert seen and all(names in (old, new) for names in seen), "a reader saw a half-switched mirror"
    assert _served(url)[1] == new and _served(url)[0] != old_release
    client = _apt(tmp_path / "apt", repo.mirror_sources()[0].line())
    gamma = next(d for d in upstream.debs.values() if d.filename.startswith("tp-gamma_"))
    assert client.download("tp-gamma").read_bytes() == gamma.path.read_bytes()


def test_unreachable_upstream_is_one_clear_error(repo: PulpRepository) -> None:
    dead = MirrorConfig(
        name="gone", url=f"http://127.0.0.1:{free_port()}/debian", distribution=SUITE, architectures=[ARCH]
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        repo.sync_mirror(dead)
    message = str(caught.value)
    assert "mirror 'gone'" in message and "cannot be reached" in message and "\n" not in message
    assert "gone" not in {s.url for s in repo.mirror_sources()}  # never synced: not a build source


def test_local_profile_reads_the_upstream_directly(upstream: Upstream, tmp_path: Path) -> None:
    local = LocalAptRepository(tmp_path / "repos", "http://127.0.0.1:1", [_mirror(upstream)])
    line = f"deb [trusted=yes] {upstream.url}/ {SUITE} {COMPONENT}"
    assert [s.line() for s in local.mirror_sources()] == [line]
    status = local.sync_mirror(_mirror(upstream))
    assert (status.source, status.packages) == (line, len(upstream.debs))
    assert _apt(tmp_path / "apt", line).download("tp-alpha").is_file()
    wrong = MirrorConfig(name="wrong", url=upstream.url, distribution="nosuch", architectures=[ARCH])
    with pytest.raises(PermanentError, match=r"^mirror 'wrong': .*/dists/nosuch/Release answered HTTP 404$"):
        local.sync_mirror(wrong)


class _RecordingRunner(HostRunner):
    """The host runner, remembering the apt sources each step was given."""

    def __init__(self) -> None:
        self.sources: list[list[str]] = []

    def run(self, job: StepJob) -> StepResult:
        self.sources.append([s.line() for s in job.extra_sources])
        return super().run(job)


def test_steps_get_the_mirror_after_the_staging_source(
    pulp_server: PulpServer, upstream: Upstream, repo: PulpRepository, tmp_path: Path
) -> None:
    repo.sync_mirror(_mirror(upstream))
    mirror_line = repo.mirror_sources()[0].line()
    settings = {
        **pulp_server.settings(),
        "mirrors": [_mirror(upstream).model_dump()],
    }
    ctx: FarmContext = make_test_context(tmp_path, f"sqlite:///{tmp_path / 'state.db'}", **settings)
    ctx.repo = make_repository(ctx.settings)
    runner = _RecordingRunner()
    ctx.runner = runner  # cached_property: this test's runner instead
    src = tmp_path / "src"
    make_package(src, "mirror-lib")
    make_package(src, "mirror-app", build_depends=("mirror-lib",))
    manifest = write_manifest(src, ["mirror-lib", "mirror-app"], project="mirrors-proj")
    try:
        submit_build(ctx, load_manifest(manifest), src, "alice")
        drain(ctx)
    finally:
        ctx.db.dispose()
    assert len(runner.sources) == 2
    assert runner.sources[0] == [mirror_line]  # first step: nothing staged yet, the mirror only
    staging, mirror = runner.sources[1]  # second: the build's staging first, then the mirror
    assert "/staging/" in staging and mirror == mirror_line


def test_cli_syncs_through_the_api(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
    pulp_server: PulpServer,
    upstream: Upstream,
) -> None:
    env = {
        "BUILDFARM_REPOSITORY": "pulp",
        "BUILDFARM_PULP_URL": pulp_server.base_url,
        "BUILDFARM_PULP_PASSWORD": pulp_server.password,
        "BUILDFARM_PULP_CONTENT_ORIGIN": pulp_server.content_origin,
        "BUILDFARM_PULP_TASK_TIMEOUT_SECONDS": "60",
        "BUILDFARM_MIRRORS": json.dumps([_mirror(upstream, "viaapi").model_dump()]),
        "BUILDFARM_API_PORT": "0",
    }
    with running_api(tmp_path_factory, postgres_url, redis_url, "mirrors_api", env, redis_db=5) as api:
        base = {**os.environ, **api.farm.env, "XDG_CONFIG_HOME": str(api.farm.state_dir / "no-config")}

        def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*BUILDFARM, "--farm", api.url, *args],
                env=base | {"BUILDFARM_TOKEN": token},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        listed = cli(api.admin, "mirror", "list", "--output", "json")
        assert listed.returncode == 0, listed.stderr
        assert [(m["name"], m["source"]) for m in json.loads(listed.stdout)] == [("viaapi", None)]
        synced = cli(api.admin, "mirror", "sync", "viaapi", "--output", "json")
        assert synced.returncode == 0, synced.stderr
        status = json.loads(synced.stdout)
        origin = pulp_server.content_origin
        line = f"deb [trusted=yes] {origin}/pulp/content/_mirrors/viaapi/ {SUITE} {COMPONENT}"
        assert status["source"] == line and status["packages"] == len(upstream.debs)
        listed = cli(api.admin, "mirror", "list", "--output", "json")
        assert json.loads(listed.stdout)[0]["source"] == line

        unknown = cli(api.admin, "mirror", "sync", "nosuch")
        assert unknown.returncode == 1
        assert unknown.stderr.strip().splitlines() == [
            "error: mirror 'nosuch' is not configured; known mirrors: viaapi"
        ]
        viewer = api.user("mviewer", "mirrorsproj", "viewer")
        refused = cli(viewer, "mirror", "sync", "viaapi")
        assert refused.returncode == 1 and "not an admin" in refused.stderr
